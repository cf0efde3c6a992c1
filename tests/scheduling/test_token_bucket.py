"""Token bucket and rate limiter: exact retry and reset times, isolation, plan changes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from render_gateway.scheduling.token_bucket import (
    BucketConfig,
    Decision,
    RateLimiter,
    TokenBucket,
)

from support.clock import FakeClock


def _bucket(capacity: float = 2.0, refill: float = 1.0) -> tuple[TokenBucket, FakeClock]:
    clock = FakeClock()
    return TokenBucket(BucketConfig(capacity, refill), clock=clock), clock


# ---------------------------------------------------------------------------------- bucket


def test_starts_full_and_drains() -> None:
    bucket, _ = _bucket(capacity=3, refill=1)
    assert bucket.take() == Decision(True, 2.0, 0.0, 1.0)
    assert bucket.take() == Decision(True, 1.0, 0.0, 2.0)
    assert bucket.take() == Decision(True, 0.0, 0.0, 3.0)


def test_third_take_is_refused_with_exact_retry_after() -> None:
    bucket, clock = _bucket(capacity=2, refill=1)
    assert bucket.take().allowed
    assert bucket.take().allowed
    assert bucket.take() == Decision(False, 0.0, 1.0, 2.0)
    clock.advance(1.0)
    assert bucket.take() == Decision(True, 0.0, 0.0, 2.0)


def test_refused_take_consumes_nothing() -> None:
    bucket, clock = _bucket(capacity=4, refill=2)
    assert bucket.take(3).allowed
    refused = bucket.take(2)
    assert refused == Decision(False, 1.0, 0.5, 1.5)
    assert bucket.take(1) == Decision(True, 0.0, 0.0, 2.0)
    clock.advance(0.5)
    assert bucket.take(1) == Decision(True, 0.0, 0.0, 2.0)


def test_retry_after_accounts_for_partial_fill_and_cost() -> None:
    bucket, clock = _bucket(capacity=10, refill=4)
    assert bucket.take(10).allowed
    clock.advance(0.5)  # 2 tokens back
    assert bucket.take(5) == Decision(False, 2.0, 0.75, 2.0)
    clock.advance(0.75)
    assert bucket.take(5) == Decision(True, 0.0, 0.0, 2.5)


def test_waiting_retry_after_always_lets_the_same_take_through() -> None:
    # Costs and rates that do not divide evenly in binary floating point.
    bucket, clock = _bucket(capacity=1.0, refill=0.3)
    for _ in range(50):
        decision = bucket.take(0.7)
        if not decision.allowed:
            clock.advance(decision.retry_after_seconds)
            assert bucket.take(0.7).allowed


def test_refill_is_continuous_and_capped() -> None:
    bucket, clock = _bucket(capacity=10, refill=2)
    assert bucket.take(10).allowed
    clock.advance(1.25)
    assert bucket.take(0) == Decision(True, 2.5, 0.0, 3.75)
    clock.advance(1000)
    assert bucket.take(0) == Decision(True, 10.0, 0.0, 0.0)
    assert bucket.take(10).allowed
    assert not bucket.take(0.001).allowed


def test_cost_above_capacity_is_refused_forever() -> None:
    bucket, _ = _bucket(capacity=2, refill=100)
    assert bucket.take(2.5) == Decision(False, 2.0, math.inf, 0.0)
    assert bucket.take(2).allowed


def test_zero_refill_never_recovers() -> None:
    bucket, clock = _bucket(capacity=2, refill=0)
    assert bucket.take(1.5) == Decision(True, 0.5, 0.0, math.inf)
    clock.advance(1e6)
    assert bucket.take(1) == Decision(False, 0.5, math.inf, math.inf)
    assert bucket.take(0.5) == Decision(True, 0.0, 0.0, math.inf)


def test_full_bucket_with_zero_refill_resets_now() -> None:
    bucket, _ = _bucket(capacity=2, refill=0)
    assert bucket.take(0).reset_after_seconds == 0.0


@pytest.mark.parametrize("cost", [-1.0, math.nan, math.inf])
def test_bad_cost_is_an_error(cost: float) -> None:
    bucket, _ = _bucket()
    with pytest.raises(ValueError, match="cost"):
        bucket.take(cost)


@pytest.mark.parametrize(
    ("capacity", "refill", "field"),
    [
        (0.0, 1.0, "capacity"),
        (-1.0, 1.0, "capacity"),
        (math.nan, 1.0, "capacity"),
        (math.inf, 1.0, "capacity"),
        (1.0, -0.1, "refill_per_second"),
        (1.0, math.nan, "refill_per_second"),
        (1.0, math.inf, "refill_per_second"),
    ],
)
def test_config_validation_names_the_field(capacity: float, refill: float, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BucketConfig(capacity, refill)


def test_clock_stepping_back_gives_nothing() -> None:
    bucket, clock = _bucket(capacity=2, refill=1)
    assert bucket.take(2).allowed
    clock.advance(-10)
    assert not bucket.take(0.5).allowed
    clock.advance(10.5)
    assert bucket.take(0.5).allowed


# ---------------------------------------------------------------------------------- limiter


def test_limiter_keeps_keys_apart() -> None:
    clock = FakeClock()
    limiter = RateLimiter(lambda key: BucketConfig(2, 1), clock=clock)
    assert limiter.take("alice", 2).allowed
    assert not limiter.take("alice").allowed
    assert limiter.take("bob") == Decision(True, 1.0, 0.0, 1.0)
    assert len(limiter) == 2


def test_limiter_uses_each_keys_config() -> None:
    clock = FakeClock()
    plans = {"small": BucketConfig(1, 1), "large": BucketConfig(100, 10)}
    limiter = RateLimiter(plans.__getitem__, clock=clock)
    assert not limiter.take("small", 5).allowed
    assert limiter.take("large", 5) == Decision(True, 95.0, 0.0, 0.5)


def test_config_change_rebuilds_the_bucket_at_the_same_fill_ratio() -> None:
    clock = FakeClock()
    plans = {"alice": BucketConfig(10, 1)}
    limiter = RateLimiter(plans.__getitem__, clock=clock)
    assert limiter.take("alice", 7.5).allowed  # a quarter full
    plans["alice"] = BucketConfig(100, 20)
    assert limiter.take("alice", 0) == Decision(True, 25.0, 0.0, 3.75)
    # Downgrade: still a quarter, of the smaller bucket.
    plans["alice"] = BucketConfig(4, 20)
    assert limiter.take("alice", 0) == Decision(True, 1.0, 0.0, 0.15)


def test_same_config_keeps_the_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(lambda key: BucketConfig(2, 1), clock=clock)  # a new equal object
    assert limiter.take("alice", 2).allowed
    assert not limiter.take("alice").allowed


def test_prune_drops_only_full_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(lambda key: BucketConfig(2, 1), clock=clock)
    limiter.take("alice", 2)
    limiter.take("bob", 0)
    assert limiter.prune() == 1
    assert len(limiter) == 1
    assert not limiter.take("alice").allowed
    clock.advance(2)
    assert limiter.prune() == 1
    assert len(limiter) == 0


def test_refund_gives_back_a_take_but_never_past_full() -> None:
    clock = FakeClock()
    limiter = RateLimiter(lambda key: BucketConfig(2, 0), clock=clock)
    assert limiter.take("alice", 2).allowed
    limiter.refund("alice")
    assert limiter.take("alice") == Decision(True, 0.0, 0.0, math.inf)
    assert not limiter.take("alice").allowed
    limiter.refund("alice", 5)
    assert limiter.take("alice", 0).remaining == 2.0
    with pytest.raises(ValueError, match="cost"):
        limiter.refund("alice", -1)


def test_pair_keys_keep_a_plan_with_a_colon_apart() -> None:
    # The gateway keys buckets by (plan, customer): plan "admin:x" is not plan "admin".
    plans = {"admin": BucketConfig(1000, 100), "default": BucketConfig(1, 0)}
    limiter: RateLimiter[tuple[str, str]] = RateLimiter(
        lambda key: plans.get(key[0], plans["default"]), clock=FakeClock()
    )
    assert limiter.take(("admin:x", "mallory")).allowed
    assert not limiter.take(("admin:x", "mallory")).allowed
    assert limiter.take(("admin", "x:mallory")).remaining == 999


def test_fill_ratio_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="fill_ratio"):
        TokenBucket(BucketConfig(1, 1), clock=FakeClock(), fill_ratio=1.5)


# ------------------------------------------------------------------------------- properties

CONFIGS = st.builds(
    BucketConfig,
    capacity=st.floats(0.1, 100.0),
    refill_per_second=st.one_of(st.just(0.0), st.floats(0.01, 50.0)),
)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0.0, 5.0)),
        st.tuples(st.just("take"), st.floats(0.0, 120.0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(config=CONFIGS, steps=STEPS)
def test_allowed_cost_never_exceeds_capacity_plus_refill(
    config: BucketConfig, steps: list[tuple[str, float]]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(config, clock=clock)
    allowed = elapsed = 0.0
    for kind, amount in steps:
        if kind == "advance":
            clock.advance(amount)
            elapsed += amount
            continue
        before = bucket.take(0).remaining
        decision = bucket.take(amount)
        if decision.allowed:
            allowed += amount
            assert decision.retry_after_seconds == 0.0
        else:
            # A refusal takes nothing and says truthfully when to come back.
            assert decision.remaining == before
            assert decision.retry_after_seconds > 0.0
        assert 0.0 <= decision.remaining <= config.capacity
        budget = config.capacity + config.refill_per_second * elapsed
        assert allowed <= budget * (1 + 1e-9) + 1e-9


@settings(max_examples=200, deadline=None)
@given(config=CONFIGS, costs=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30))
def test_waiting_retry_after_is_always_enough(config: BucketConfig, costs: list[float]) -> None:
    clock = FakeClock()
    bucket = TokenBucket(config, clock=clock)
    for fraction in costs:
        cost = fraction * config.capacity
        decision = bucket.take(cost)
        if not decision.allowed and math.isfinite(decision.retry_after_seconds):
            clock.advance(decision.retry_after_seconds)
            assert bucket.take(cost).allowed

"""The bucket arithmetic as pure functions on stored state (the stores' behaviour is in
tests/contracts/test_limits.py): exact answers, and properties over any sequence of calls."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from render_gateway.scheduling.token_bucket import (
    BucketConfig,
    BucketState,
    Decision,
    full_at,
    refund_to,
    take_from,
)

# The slack take_from allows so that waiting exactly retry_after passes despite rounding: the
# stored tokens may dip this far (relative to capacity) below zero, and refill repays it.
SLACK = 1e-9


def test_no_state_is_a_full_bucket_counted_from_now() -> None:
    state, decision = take_from(None, BucketConfig(3, 1), 1.0, now=50.0)
    assert state == BucketState(2.0, 50.0)
    assert decision == Decision(True, 2.0, 0.0, 1.0)
    assert refund_to(None, BucketConfig(3, 1), 1.0, now=50.0) == BucketState(3.0, 50.0)


def test_take_refills_by_elapsed_time_then_takes() -> None:
    state, decision = take_from(BucketState(1.0, 10.0), BucketConfig(10, 4), 5.0, now=11.0)
    assert state == BucketState(0.0, 11.0)
    assert decision == Decision(True, 0.0, 0.0, 2.5)


def test_a_refused_take_returns_the_state_it_was_given() -> None:
    before = BucketState(1.0, 10.0)
    state, decision = take_from(before, BucketConfig(4, 2), 2.0, now=10.25)
    assert state is before  # nothing to write back
    assert decision == Decision(False, 1.5, 0.25, 1.25)


def test_a_cost_above_capacity_is_refused_without_a_state() -> None:
    state, decision = take_from(None, BucketConfig(2, 100), 2.5, now=7.0)
    assert state == BucketState(2.0, 7.0)
    assert decision == Decision(False, 2.0, math.inf, 0.0)


def test_a_clock_behind_the_state_neither_refills_nor_rewinds() -> None:
    state, decision = take_from(BucketState(0.5, 100.0), BucketConfig(2, 1), 0.5, now=90.0)
    assert state == BucketState(0.0, 100.0)
    assert decision.allowed


def test_tokens_above_a_smaller_capacity_are_capped() -> None:
    # A plan reconfigured to a smaller bucket: the stored tokens carry over, capped.
    state, decision = take_from(BucketState(10.0, 0.0), BucketConfig(4, 1), 0.0, now=0.0)
    assert state == BucketState(4.0, 0.0)
    assert decision == Decision(True, 4.0, 0.0, 0.0)


def test_refund_refills_first_and_never_passes_full() -> None:
    config = BucketConfig(2, 1)
    assert refund_to(BucketState(0.0, 0.0), config, 1.0, now=0.5) == BucketState(1.5, 0.5)
    assert refund_to(BucketState(1.5, 0.0), config, 5.0, now=0.0) == BucketState(2.0, 0.0)


def test_full_at() -> None:
    assert full_at(BucketState(1.0, 10.0), BucketConfig(5, 2)) == 12.0
    assert full_at(BucketState(5.0, 10.0), BucketConfig(5, 2)) == 10.0
    assert full_at(BucketState(6.0, 10.0), BucketConfig(5, 2)) == 10.0
    assert full_at(BucketState(1.0, 10.0), BucketConfig(5, 0)) == math.inf


@pytest.mark.parametrize("cost", [-1.0, math.nan, math.inf])
def test_bad_cost_is_an_error(cost: float) -> None:
    with pytest.raises(ValueError, match="cost"):
        take_from(None, BucketConfig(2, 1), cost, now=0.0)
    with pytest.raises(ValueError, match="cost"):
        refund_to(None, BucketConfig(2, 1), cost, now=0.0)


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
        st.tuples(st.just("refund"), st.floats(0.0, 120.0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(config=CONFIGS, steps=STEPS)
def test_tokens_stay_within_the_bucket_and_a_refusal_changes_nothing(
    config: BucketConfig, steps: list[tuple[str, float]]
) -> None:
    state: BucketState | None = None
    now = 1000.0
    for kind, amount in steps:
        if kind == "advance":
            now += amount
            continue
        if kind == "refund":
            state = refund_to(state, config, amount, now)
        else:
            after, decision = take_from(state, config, amount, now)
            if not decision.allowed:
                assert after is state or (state is None and after.tokens == config.capacity)
                assert decision.retry_after_seconds > 0.0
            else:
                assert decision.retry_after_seconds == 0.0
            assert 0.0 <= decision.remaining <= config.capacity
            state = after
        assert -config.capacity * SLACK <= state.tokens <= config.capacity
        assert state.updated_at <= now


@settings(max_examples=300, deadline=None)
@given(config=CONFIGS, steps=STEPS.map(lambda s: [step for step in s if step[0] != "refund"]))
def test_allowed_cost_never_exceeds_capacity_plus_refill(
    config: BucketConfig, steps: list[tuple[str, float]]
) -> None:
    state: BucketState | None = None
    now = 1000.0
    allowed = elapsed = 0.0
    for kind, amount in steps:
        if kind == "advance":
            now += amount
            elapsed += amount
            continue
        state, decision = take_from(state, config, amount, now)
        if decision.allowed:
            allowed += amount
        budget = config.capacity + config.refill_per_second * elapsed
        assert allowed <= budget * (1 + SLACK) + SLACK


@settings(max_examples=200, deadline=None)
@given(config=CONFIGS, costs=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30))
def test_waiting_retry_after_is_always_enough(config: BucketConfig, costs: list[float]) -> None:
    state: BucketState | None = None
    now = 1000.0
    for fraction in costs:
        cost = fraction * config.capacity
        state, decision = take_from(state, config, cost, now)
        if not decision.allowed and math.isfinite(decision.retry_after_seconds):
            now += decision.retry_after_seconds
            state, decision = take_from(state, config, cost, now)
            assert decision.allowed


@settings(max_examples=200, deadline=None)
@given(
    config=CONFIGS,
    tokens=st.floats(0.0, 1.0),
    elapsed=st.floats(0.0, 100.0),
)
def test_full_at_is_when_the_refill_reaches_capacity(
    config: BucketConfig, tokens: float, elapsed: float
) -> None:
    # Forgetting a state from full_at on must change nothing: it then reads as a full bucket.
    state = BucketState(tokens * config.capacity, 1000.0)
    when = full_at(state, config)
    now = 1000.0 + elapsed
    _, decision = take_from(state, config, 0.0, now)
    if now >= when:
        assert decision.remaining == pytest.approx(config.capacity, rel=1e-9)
    elif when - now > 1e-6:  # a hair before, rounding may already read as full
        assert decision.remaining < config.capacity

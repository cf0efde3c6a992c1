"""One contract for the rate-limit store (stores/limits.py), run against every implementation.

``memory://`` and ``redis://`` (a real redis-server, each test under a fresh key prefix). The
tests use the Protocol's operations only, on a FakeClock handed to the store, so every retry and
reset time is exact. ``replica`` is a second handle on the same buckets, as another gateway
process would open it: for memory (one process is the whole deployment) the same object, for
Redis a second client on the same prefix.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from render_gateway.scheduling.token_bucket import BucketConfig, Decision
from render_gateway.stores.limits import RateLimits, limit_key, open_rate_limits
from render_gateway.stores.redis_client import key, open_redis
from render_gateway.stores.redis_limits import RedisRateLimits
from render_gateway.stores.urls import StoreUrlError

from support.clock import FakeClock
from support.redis_server import RedisServer


@dataclass
class Backend:
    open: Callable[[FakeClock], RateLimits]
    # A second handle on the same buckets, as another replica has it.
    replica: Callable[[RateLimits], Awaitable[RateLimits]]
    # Handles opened besides the one the fixture closes.
    others: list[RateLimits] = field(default_factory=list)


def _memory_backend(request: pytest.FixtureRequest) -> Backend:
    async def same_store(limits: RateLimits) -> RateLimits:
        return limits

    return Backend(
        open=lambda clock: open_rate_limits("memory://", clock=clock), replica=same_store
    )


def _redis_backend(request: pytest.FixtureRequest) -> Backend:
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = key("limits", f"test-{uuid.uuid4().hex}")
    clocks: list[FakeClock] = []

    def open_store(clock: FakeClock) -> RateLimits:
        clocks.append(clock)
        return RedisRateLimits(open_redis(server.url), clock, prefix=prefix)

    async def second_client(limits: RateLimits) -> RateLimits:
        other = RedisRateLimits(open_redis(server.url), clocks[-1], prefix=prefix)
        made.others.append(other)
        return other

    made = Backend(open=open_store, replica=second_client)
    return made


BACKENDS = {"memory": _memory_backend, "redis": _redis_backend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param](request)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def limits(backend: Backend, clock: FakeClock) -> AsyncIterator[RateLimits]:
    opened = backend.open(clock)
    yield opened
    await opened.close()
    for other in backend.others:
        await other.close()


def bucket(capacity: float = 2.0, refill: float = 1.0) -> BucketConfig:
    return BucketConfig(capacity, refill)


# ---------------------------------------------------------------------------------- one key


async def test_starts_full_and_drains(limits: RateLimits) -> None:
    config = bucket(capacity=3, refill=1)
    assert await limits.take("k", config) == Decision(True, 2.0, 0.0, 1.0)
    assert await limits.take("k", config) == Decision(True, 1.0, 0.0, 2.0)
    assert await limits.take("k", config) == Decision(True, 0.0, 0.0, 3.0)


async def test_third_take_is_refused_with_exact_retry_after(
    limits: RateLimits, clock: FakeClock
) -> None:
    config = bucket(capacity=2, refill=1)
    assert (await limits.take("k", config)).allowed
    assert (await limits.take("k", config)).allowed
    assert await limits.take("k", config) == Decision(False, 0.0, 1.0, 2.0)
    clock.advance(1.0)
    assert await limits.take("k", config) == Decision(True, 0.0, 0.0, 2.0)


async def test_refused_take_consumes_nothing(limits: RateLimits, clock: FakeClock) -> None:
    config = bucket(capacity=4, refill=2)
    assert (await limits.take("k", config, 3)).allowed
    assert await limits.take("k", config, 2) == Decision(False, 1.0, 0.5, 1.5)
    assert await limits.take("k", config, 1) == Decision(True, 0.0, 0.0, 2.0)
    clock.advance(0.5)
    assert await limits.take("k", config, 1) == Decision(True, 0.0, 0.0, 2.0)


async def test_retry_after_accounts_for_partial_fill_and_cost(
    limits: RateLimits, clock: FakeClock
) -> None:
    config = bucket(capacity=10, refill=4)
    assert (await limits.take("k", config, 10)).allowed
    clock.advance(0.5)  # 2 tokens back
    assert await limits.take("k", config, 5) == Decision(False, 2.0, 0.75, 2.0)
    clock.advance(0.75)
    assert await limits.take("k", config, 5) == Decision(True, 0.0, 0.0, 2.5)


async def test_waiting_retry_after_always_lets_the_same_take_through(
    limits: RateLimits, clock: FakeClock
) -> None:
    # Costs and rates that do not divide evenly in binary floating point.
    config = bucket(capacity=1.0, refill=0.3)
    refusals = 0
    for _ in range(50):
        decision = await limits.take("k", config, 0.7)
        if not decision.allowed:
            refusals += 1
            clock.advance(decision.retry_after_seconds)
            assert (await limits.take("k", config, 0.7)).allowed
    assert refusals > 0  # the loop did wait: otherwise it proved nothing


async def test_refill_is_continuous_and_capped(limits: RateLimits, clock: FakeClock) -> None:
    config = bucket(capacity=10, refill=2)
    assert (await limits.take("k", config, 10)).allowed
    clock.advance(1.25)
    assert await limits.take("k", config, 0) == Decision(True, 2.5, 0.0, 3.75)
    clock.advance(1000)
    assert await limits.take("k", config, 0) == Decision(True, 10.0, 0.0, 0.0)
    assert (await limits.take("k", config, 10)).allowed
    assert not (await limits.take("k", config, 0.001)).allowed


async def test_cost_above_capacity_is_refused_forever(limits: RateLimits) -> None:
    config = bucket(capacity=2, refill=100)
    assert await limits.take("k", config, 2.5) == Decision(False, 2.0, math.inf, 0.0)
    assert (await limits.take("k", config, 2)).allowed


async def test_zero_refill_never_recovers(limits: RateLimits, clock: FakeClock) -> None:
    config = bucket(capacity=2, refill=0)
    assert await limits.take("k", config, 1.5) == Decision(True, 0.5, 0.0, math.inf)
    clock.advance(1e6)
    assert await limits.take("k", config, 1) == Decision(False, 0.5, math.inf, math.inf)
    assert await limits.take("k", config, 0.5) == Decision(True, 0.0, 0.0, math.inf)


async def test_full_bucket_with_zero_refill_resets_now(limits: RateLimits) -> None:
    assert (await limits.take("k", bucket(capacity=2, refill=0), 0)).reset_after_seconds == 0.0


async def test_clock_stepping_back_gives_nothing(limits: RateLimits, clock: FakeClock) -> None:
    config = bucket(capacity=2, refill=1)
    assert (await limits.take("k", config, 2)).allowed
    clock.advance(-10)
    assert not (await limits.take("k", config, 0.5)).allowed
    clock.advance(10.5)
    assert (await limits.take("k", config, 0.5)).allowed


@pytest.mark.parametrize("cost", [-1.0, math.nan, math.inf])
async def test_bad_cost_is_an_error_and_changes_nothing(limits: RateLimits, cost: float) -> None:
    config = bucket(capacity=2, refill=0)
    assert (await limits.take("k", config, 1)).allowed
    with pytest.raises(ValueError, match="cost"):
        await limits.take("k", config, cost)
    with pytest.raises(ValueError, match="cost"):
        await limits.refund("k", config, cost)
    assert (await limits.take("k", config, 0)).remaining == 1.0


# ---------------------------------------------------------------------------------- refunds


async def test_refund_gives_back_a_take_but_never_past_full(limits: RateLimits) -> None:
    config = bucket(capacity=2, refill=0)
    assert (await limits.take("k", config, 2)).allowed
    await limits.refund("k", config)
    assert await limits.take("k", config) == Decision(True, 0.0, 0.0, math.inf)
    assert not (await limits.take("k", config)).allowed
    await limits.refund("k", config, 5)
    assert (await limits.take("k", config, 0)).remaining == 2.0


async def test_refund_to_an_untouched_key_leaves_it_full(limits: RateLimits) -> None:
    config = bucket(capacity=2, refill=0)
    await limits.refund("fresh", config)
    assert await limits.take("fresh", config, 0) == Decision(True, 2.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------- many keys


async def test_keys_are_kept_apart(limits: RateLimits) -> None:
    config = bucket(capacity=2, refill=1)
    assert (await limits.take("alice", config, 2)).allowed
    assert not (await limits.take("alice", config)).allowed
    assert await limits.take("bob", config) == Decision(True, 1.0, 0.0, 1.0)


async def test_each_take_uses_the_config_it_is_given(limits: RateLimits) -> None:
    assert not (await limits.take("small", bucket(1, 1), 5)).allowed
    assert await limits.take("large", bucket(100, 10), 5) == Decision(True, 95.0, 0.0, 0.5)


async def test_an_equal_config_keeps_the_bucket(limits: RateLimits) -> None:
    assert (await limits.take("k", BucketConfig(2, 1), 2)).allowed
    assert not (await limits.take("k", BucketConfig(2, 1))).allowed  # a new, equal object


async def test_a_changed_config_carries_the_tokens_over_capped(limits: RateLimits) -> None:
    # The gateway keys buckets by plan and customer, so only a reconfigured plan does this.
    assert (await limits.take("k", bucket(10, 1), 7.5)).allowed  # 2.5 left
    # Larger: no free refill, the same tokens, refilling at the new rate.
    assert await limits.take("k", bucket(100, 20), 0) == Decision(True, 2.5, 0.0, 4.875)
    # Smaller than what is there: capped at the new capacity.
    assert await limits.take("k", bucket(1, 20), 0) == Decision(True, 1.0, 0.0, 0.0)


async def test_plan_and_customer_keys_with_colons_stay_apart(limits: RateLimits) -> None:
    # Plan "admin:x" must never read as plan "admin", whatever the customer is called.
    config = bucket(capacity=1, refill=0)
    assert (await limits.take(limit_key("admin:x", "mallory"), config)).allowed
    assert not (await limits.take(limit_key("admin:x", "mallory"), config)).allowed
    assert (await limits.take(limit_key("admin", "x:mallory"), config)).allowed


async def test_a_replica_sees_the_same_buckets(backend: Backend, limits: RateLimits) -> None:
    other = await backend.replica(limits)
    config = bucket(capacity=2, refill=0)
    assert (await limits.take("k", config, 2)).allowed
    assert not (await other.take("k", config)).allowed
    await other.refund("k", config)
    assert (await limits.take("k", config)).allowed


# ------------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize(("takes", "capacity"), [(50, 20), (200, 1), (10, 10)])
async def test_concurrent_takes_on_one_key_allow_exactly_capacity(
    backend: Backend, limits: RateLimits, takes: int, capacity: int
) -> None:
    # Half the takes through a second handle: atomicity must hold across replicas too.
    other = await backend.replica(limits)
    config = bucket(capacity=capacity, refill=0)
    decisions = await asyncio.gather(
        *((limits if n % 2 else other).take("k", config) for n in range(takes))
    )
    assert sum(decision.allowed for decision in decisions) == capacity
    assert (await limits.take("k", config, 0)).remaining == 0.0


async def test_concurrent_refunds_and_takes_lose_no_token(limits: RateLimits) -> None:
    config = bucket(capacity=10, refill=0)
    assert (await limits.take("k", config, 10)).allowed
    await asyncio.gather(*(limits.refund("k", config) for _ in range(10)))
    decisions = await asyncio.gather(*(limits.take("k", config) for _ in range(15)))
    assert sum(decision.allowed for decision in decisions) == 10


# ---------------------------------------------------------------------------------- opening


async def test_opens_with_the_default_clock() -> None:
    limits = open_rate_limits("memory://")
    first = await limits.take("k", bucket(capacity=2, refill=0))
    assert first == Decision(True, 1.0, 0.0, math.inf)
    await limits.close()


async def test_opens_redis_from_its_url(redis_server: RedisServer) -> None:
    limits = open_rate_limits(redis_server.url, clock=FakeClock())
    assert isinstance(limits, RedisRateLimits)
    name = f"open-{uuid.uuid4().hex}"
    assert await limits.take(name, bucket(capacity=2, refill=1)) == Decision(True, 1.0, 0.0, 1.0)
    await limits.close()


@pytest.mark.parametrize("url", ["memroy://", "sqlite:///tmp/limits.db", "redi://127.0.0.1"])
def test_an_unknown_scheme_names_the_setting(url: str) -> None:
    with pytest.raises(StoreUrlError, match=r"gateway\.stores\.limits.*memory://.*redis://"):
        open_rate_limits(url)


# Mostly colons and digits, where a careless join (or length prefix) would collide.
NAMES = st.text(alphabet="1:a", max_size=8) | st.text(max_size=12)


@given(first=st.tuples(NAMES, NAMES), second=st.tuples(NAMES, NAMES))
def test_limit_key_is_one_to_one(first: tuple[str, str], second: tuple[str, str]) -> None:
    assert (limit_key(*first) == limit_key(*second)) == (first == second)

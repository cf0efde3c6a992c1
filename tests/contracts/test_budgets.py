"""One contract for the budget store, run against every implementation: ``memory://`` and
``redis://`` (a real redis-server, each opened store under a fresh key prefix). Only the
Protocol's operations are used.

Admission is all-or-nothing, holds settle to actual usage, and every operation is idempotent by
request id: a retried reserve holds nothing twice, a retried settle bills nothing twice.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from render_gateway.core.budgets import Amount, BudgetExceeded, BudgetLimit
from render_gateway.core.usage_records import NANOS
from render_gateway.stores.budgets import AgedHold, BudgetStore, open_budget_store
from render_gateway.stores.memory_budgets import MemoryBudgetStore
from render_gateway.stores.redis_budgets import RedisBudgetStore, settled_expiry
from render_gateway.stores.redis_client import key, open_redis
from render_gateway.stores.urls import StoreUrlError

from support.redis_server import RedisServer

MONTH = "2026-11"
NONE = BudgetLimit()  # no limit


@dataclass
class Backend:
    # Opens an empty store (a fresh namespace where the store is shared).
    open: Callable[[], BudgetStore]
    # The same, its holds stamped by the given clock.
    open_at: Callable[[Callable[[], float]], BudgetStore]


def _memory_backend(request: pytest.FixtureRequest) -> Backend:
    return Backend(
        open=lambda: open_budget_store("memory://"), open_at=lambda clock: MemoryBudgetStore(clock)
    )


def _redis_backend(request: pytest.FixtureRequest) -> Backend:
    server: RedisServer = request.getfixturevalue("redis_server")

    def open_store(clock: Callable[[], float] = time.time) -> BudgetStore:
        prefix = key("budgets", f"test-{uuid.uuid4().hex}")
        return RedisBudgetStore(open_redis(server.url), prefix=prefix, clock=clock)

    return Backend(open=open_store, open_at=open_store)


BACKENDS = {"memory": _memory_backend, "redis": _redis_backend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param](request)


@pytest.fixture
async def book(backend: Backend) -> AsyncIterator[BudgetStore]:
    opened = backend.open()
    yield opened
    await opened.close()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def timed(backend: Backend, clock: Clock) -> AsyncIterator[BudgetStore]:
    opened = backend.open_at(clock)
    yield opened
    await opened.close()


def gpu(limit: float) -> BudgetLimit:
    return BudgetLimit(gpu_seconds=limit)


async def reserved(book: BudgetStore, customer: str = "small", month: str = MONTH) -> Amount:
    return (await book.state(customer, "p", month, NONE)).reserved


async def spent(book: BudgetStore, customer: str = "small", month: str = MONTH) -> Amount:
    return (await book.state(customer, "p", month, NONE)).spent


# The ledger's behaviour.


async def test_reservations_count_against_the_limit_until_released(book: BudgetStore) -> None:
    limit = gpu(3.0)
    await book.reserve("a", "small", "p", MONTH, Amount(1.0), limit)
    await book.reserve("b", "small", "p", MONTH, Amount(1.5), limit)
    with pytest.raises(BudgetExceeded, match="GPU-seconds budget of 3"):
        await book.reserve("c", "small", "p", MONTH, Amount(1.0), limit)
    released = await book.release("a")
    assert released is not None and released.amount == Amount(1.0)
    await book.reserve("c", "small", "p", MONTH, Amount(1.0), limit)
    assert (await reserved(book)).gpu_seconds == pytest.approx(2.5)


async def test_settle_replaces_the_reservation_with_actual_usage(book: BudgetStore) -> None:
    reservation = await book.reserve("a", "small", "p", MONTH, Amount(1.5), gpu(2.0))
    assert (reservation.key, reservation.customer_id, reservation.month) == ("a", "small", MONTH)
    assert (reservation.amount, reservation.plan) == (Amount(1.5), "p")
    assert await book.settle("a", "small", MONTH, Amount(0.25))
    state = await book.state("small", "p", MONTH, gpu(2.0))
    assert (state.spent.gpu_seconds, state.reserved.gpu_seconds) == (0.25, 0.0)
    assert state.limit == gpu(2.0)
    assert await book.open_reservations() == 0


async def test_money_limit_and_other_months_and_customers_are_separate(
    book: BudgetStore,
) -> None:
    limit = BudgetLimit(cost_nanos=NANOS)  # 1.0 in money
    await book.add_spent("small", "2026-10", Amount(0, NANOS))  # last month's does not count
    await book.reserve("a", "small", "p", MONTH, Amount(0, NANOS), limit)
    with pytest.raises(BudgetExceeded, match="cost budget"):
        await book.reserve("b", "small", "p", MONTH, Amount(0, 1), limit)
    await book.reserve("c", "big", "p", MONTH, Amount(10**6, 10**15), NONE)  # no limit
    await book.reserve("d", "other", "p", MONTH, Amount(0, NANOS), limit)  # its own budget
    assert (await spent(book, month="2026-10")).cost_nanos == NANOS
    assert (await reserved(book, "big")).cost_nanos == 10**15


async def test_a_refused_request_holds_nothing(book: BudgetStore) -> None:
    with pytest.raises(BudgetExceeded) as refused:
        await book.reserve("a", "small", "p", MONTH, Amount(2.0), gpu(1.0))
    assert (refused.value.limit, refused.value.committed, refused.value.asked) == (1.0, 0.0, 2.0)
    assert await book.open_reservations() == 0
    assert await reserved(book) == Amount()
    assert await book.release("a") is None


async def test_forced_reservations_skip_the_check(book: BudgetStore) -> None:
    await book.reserve("a", "small", "p", MONTH, Amount(5.0), gpu(1.0), force=True)
    assert (await reserved(book)).gpu_seconds == 5.0
    with pytest.raises(BudgetExceeded):
        await book.reserve("b", "small", "p", MONTH, Amount(0.1), gpu(1.0))


async def test_spent_usage_counts_against_the_limit(book: BudgetStore) -> None:
    await book.add_spent("small", MONTH, Amount(0.75))
    await book.add_spent("small", MONTH, Amount(0.25))
    assert (await spent(book)).gpu_seconds == 1.0
    with pytest.raises(BudgetExceeded):
        await book.reserve("a", "small", "p", MONTH, Amount(0.5), gpu(1.25))
    await book.reserve("a", "small", "p", MONTH, Amount(0.25), gpu(1.25))  # exactly the limit


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 2.0), st.floats(0.0, 1.0)), max_size=60))
def test_spent_never_exceeds_the_limit_when_usage_stays_within_reservations(
    backend: Backend, runs: list[tuple[float, float]]
) -> None:
    """Any interleaving of admissions and settlements: what is spent stays within the budget
    as long as no run uses more than it reserved."""

    async def scenario() -> None:
        book, limit = backend.open(), 5.0
        rng = random.Random(len(runs))
        open_keys: list[tuple[str, float, float]] = []
        try:
            for index, (hold, fraction) in enumerate(runs):
                try:
                    await book.reserve(str(index), "small", "p", MONTH, Amount(hold), gpu(limit))
                    open_keys.append((str(index), hold, fraction))
                except BudgetExceeded:
                    pass
                if open_keys and rng.random() < 0.5:
                    key, held, used = open_keys.pop(rng.randrange(len(open_keys)))
                    assert await book.settle(key, "small", MONTH, Amount(held * used))
                state = await book.state("small", "p", MONTH, gpu(limit))
                assert state.spent.gpu_seconds + state.reserved.gpu_seconds <= limit + 1e-9
        finally:
            await book.close()

    asyncio.run(scenario())


async def test_a_charge_grows_the_hold_and_says_when_the_next_step_crosses_the_limit(
    book: BudgetStore,
) -> None:
    limit = gpu(3.0)
    await book.reserve("a", "small", "p", MONTH, Amount(1.0), limit)
    await book.reserve("b", "small", "p", MONTH, Amount(1.0), limit)
    assert await book.charge("a", Amount(0.5), limit)  # below what it holds: nothing changes
    assert (await reserved(book)).gpu_seconds == 2.0
    assert await book.charge("a", Amount(2.0), limit)  # 2.0 + 1.0 held by b = the limit: fits
    assert not await book.charge("a", Amount(2.25), limit)  # crosses: held anyway, caller stops
    assert (await reserved(book)).gpu_seconds == 3.25
    with pytest.raises(BudgetExceeded):  # nothing new is admitted meanwhile
        await book.reserve("c", "small", "p", MONTH, Amount(0.01), limit)
    assert await book.settle("a", "small", MONTH, Amount(2.2))
    assert (await spent(book)).gpu_seconds == 2.2
    assert await book.charge("a", Amount(9.0), limit)  # settled: no longer held, nothing to charge
    assert (await reserved(book)).gpu_seconds == 1.0  # b's alone


async def test_a_charge_grows_each_dimension_on_its_own(book: BudgetStore) -> None:
    limit = BudgetLimit(gpu_seconds=10.0, cost_nanos=100)
    await book.reserve("a", "small", "p", MONTH, Amount(2.0, 50), limit)
    assert await book.charge("a", Amount(1.0, 80), limit)  # less time, more money
    assert await reserved(book) == Amount(2.0, 80)
    assert not await book.charge("a", Amount(1.0, 101), limit)
    assert await reserved(book) == Amount(2.0, 101)


async def test_a_charge_is_judged_by_the_limit_it_is_given(book: BudgetStore) -> None:
    """The caller passes the limit of the plan the request was admitted under."""
    await book.reserve("a", "c", "tight", MONTH, Amount(0.5), gpu(1.0))
    assert not await book.charge("a", Amount(1.5), gpu(1.0))
    await book.reserve("b", "d", "loose", MONTH, Amount(0.5), gpu(100.0))
    assert await book.charge("b", Amount(50.0), gpu(100.0))
    assert await book.charge("b", Amount(60.0), NONE)  # unlimited: any hold fits


async def test_a_charge_for_a_key_never_held_holds_nothing(book: BudgetStore) -> None:
    assert await book.charge("nobody", Amount(5.0), gpu(1.0))
    assert await book.open_reservations() == 0
    assert await reserved(book) == Amount()


# Idempotency by request id.


async def test_reserving_a_key_again_returns_its_hold_unchanged(book: BudgetStore) -> None:
    limit = gpu(2.0)
    first = await book.reserve("a", "small", "p", MONTH, Amount(1.5), limit)
    # A retry, even with another amount and with the budget now too full for it, holds
    # nothing more and is not refused: the request was admitted already.
    again = await book.reserve("a", "small", "p", MONTH, Amount(1.0), limit)
    assert again == first
    assert (await reserved(book)).gpu_seconds == 1.5
    assert await book.open_reservations() == 1


async def test_reserving_a_key_again_keeps_what_it_was_charged(book: BudgetStore) -> None:
    await book.reserve("a", "small", "p", MONTH, Amount(1.0), gpu(5.0))
    assert await book.charge("a", Amount(3.0), gpu(5.0))
    again = await book.reserve("a", "small", "p", MONTH, Amount(1.0), gpu(5.0), force=True)
    assert again.amount == Amount(3.0)
    assert (await reserved(book)).gpu_seconds == 3.0


async def test_settling_twice_bills_once(book: BudgetStore) -> None:
    await book.reserve("a", "small", "p", MONTH, Amount(1.0), gpu(5.0))
    assert await book.settle("a", "small", MONTH, Amount(0.5))
    assert not await book.settle("a", "small", MONTH, Amount(0.5))
    assert not await book.settle("a", "small", MONTH, Amount(9.0))  # whatever it says
    assert await spent(book) == Amount(0.5)
    assert await reserved(book) == Amount()


async def test_settling_after_a_release_bills_once_and_holds_nothing(book: BudgetStore) -> None:
    await book.reserve("a", "small", "p", MONTH, Amount(1.0), gpu(5.0))
    await book.reserve("b", "small", "p", MONTH, Amount(2.0), gpu(5.0))
    assert await book.release("a") is not None
    assert await book.settle("a", "small", MONTH, Amount(0.5))  # its usage is still billed
    assert not await book.settle("a", "small", MONTH, Amount(0.5))
    assert await spent(book) == Amount(0.5)
    assert await reserved(book) == Amount(2.0)  # b's hold is untouched
    assert await book.release("a") is None


async def test_a_key_never_reserved_can_be_settled_once(book: BudgetStore) -> None:
    assert await book.settle("sync-1", "small", MONTH, Amount(0.5))
    assert not await book.settle("sync-1", "small", MONTH, Amount(0.5))
    assert await spent(book) == Amount(0.5)


async def test_releasing_twice_drops_the_hold_once(book: BudgetStore) -> None:
    await book.reserve("a", "small", "p", MONTH, Amount(1.0), gpu(5.0))
    await book.reserve("b", "small", "p", MONTH, Amount(1.0), gpu(5.0))
    assert await book.release("a") is not None
    assert await book.release("a") is None
    assert await reserved(book) == Amount(1.0)


async def test_a_settled_key_reserved_again_holds_nothing(book: BudgetStore) -> None:
    """A replay of a finished request (a restart restoring a job another replica settled)
    must not leave a hold that nothing will ever settle."""
    await book.reserve("a", "small", "p", MONTH, Amount(1.0), gpu(5.0))
    assert await book.settle("a", "small", MONTH, Amount(1.0))
    reservation = await book.reserve("a", "small", "p", MONTH, Amount(1.0), gpu(5.0), force=True)
    assert reservation.key == "a"
    assert await book.open_reservations() == 0
    assert await reserved(book) == Amount()
    assert not await book.settle("a", "small", MONTH, Amount(1.0))
    assert await spent(book) == Amount(1.0)


async def test_a_settled_key_is_remembered_into_the_next_month(book: BudgetStore) -> None:
    assert await book.settle("a", "small", "2026-11", Amount(1.0))
    assert await book.settle("b", "small", "2026-12", Amount(1.0))  # the next month begins
    assert not await book.settle("a", "small", "2026-11", Amount(1.0))
    assert await spent(book, month="2026-11") == Amount(1.0)


async def test_state_and_open_reservations_count_holds(book: BudgetStore) -> None:
    await book.reserve("a", "small", "p", MONTH, Amount(1.0, 10), NONE)
    await book.reserve("b", "small", "p", MONTH, Amount(0.5, 5), NONE)
    await book.reserve("c", "small", "p", "2026-12", Amount(4.0), NONE)
    await book.add_spent("small", MONTH, Amount(2.0, 20))
    state = await book.state("small", "p", MONTH, gpu(9.0))
    assert (state.limit, state.spent, state.reserved) == (
        gpu(9.0),
        Amount(2.0, 20),
        Amount(1.5, 15),
    )
    assert await book.open_reservations() == 3
    empty = await book.state("nobody", "p", MONTH, NONE)
    assert (empty.spent, empty.reserved) == (Amount(), Amount())


# Concurrency: asyncio.gather interleaves the calls as concurrent requests would.


async def test_concurrent_reserves_on_one_budget_never_overspend(book: BudgetStore) -> None:
    limit = gpu(5.0)

    async def admit(key: str) -> bool:
        try:
            await book.reserve(key, "small", "p", MONTH, Amount(1.0), limit)
        except BudgetExceeded:
            return False
        return True

    admitted = await asyncio.gather(*(admit(f"r{n}") for n in range(20)))
    assert admitted.count(True) == 5
    assert (await reserved(book)).gpu_seconds == 5.0
    assert await book.open_reservations() == 5


async def test_concurrent_reserves_of_one_key_hold_once(book: BudgetStore) -> None:
    results = await asyncio.gather(
        *(book.reserve("a", "small", "p", MONTH, Amount(1.0), gpu(5.0)) for _ in range(10))
    )
    assert len(set(results)) == 1
    assert (await reserved(book)).gpu_seconds == 1.0


async def test_concurrent_settles_of_one_key_bill_once(book: BudgetStore) -> None:
    await book.reserve("a", "small", "p", MONTH, Amount(1.0), gpu(5.0))
    results = await asyncio.gather(
        *(book.settle("a", "small", MONTH, Amount(0.5)) for _ in range(10))
    )
    assert results.count(True) == 1
    assert await spent(book) == Amount(0.5)
    assert await reserved(book) == Amount()


async def test_concurrent_charges_never_shrink_a_hold(book: BudgetStore) -> None:
    await book.reserve("a", "small", "p", MONTH, Amount(1.0), NONE)
    needs = [Amount(float(n)) for n in range(1, 11)]
    random.Random(7).shuffle(needs)
    await asyncio.gather(*(book.charge("a", need, NONE) for need in needs))
    assert await reserved(book) == Amount(10.0)


# Aged holds: what the hold janitor (application/budget_janitor.py) finds and releases.


async def test_holds_older_than_lists_old_holds_oldest_first(
    timed: BudgetStore, clock: Clock
) -> None:
    start = clock.now
    await timed.reserve("b", "small", "p", MONTH, Amount(1.0), NONE)
    await timed.reserve("a", "other:one", "p", MONTH, Amount(1.0), NONE)  # same second: by key
    clock.now = start + 10
    await timed.reserve("c", "small", "p", MONTH, Amount(1.0), NONE)
    clock.now = start + 20
    await timed.reserve("d", "small", "p", MONTH, Amount(1.0), NONE)
    assert await timed.holds_older_than(start + 20) == [
        AgedHold("a", "other:one", start),
        AgedHold("b", "small", start),
        AgedHold("c", "small", start + 10),
    ]
    assert await timed.holds_older_than(start) == []  # strictly older
    assert [h.key for h in await timed.holds_older_than(start + 21, offset=1, limit=2)] == [
        "b",
        "c",
    ]


async def test_a_hold_reserved_again_keeps_when_it_was_made(
    timed: BudgetStore, clock: Clock
) -> None:
    start = clock.now
    await timed.reserve("a", "small", "p", MONTH, Amount(1.0), NONE)
    clock.now = start + 100
    await timed.reserve("a", "small", "p", MONTH, Amount(1.0), NONE)  # a retried reserve
    assert await timed.holds_older_than(start + 1) == [AgedHold("a", "small", start)]


async def test_released_and_settled_holds_are_no_longer_aged(
    timed: BudgetStore, clock: Clock
) -> None:
    for name in ("a", "b", "c"):
        await timed.reserve(name, "small", "p", MONTH, Amount(1.0), NONE)
    await timed.release("a")
    await timed.settle("b", "small", MONTH, Amount(0.5))
    clock.now += 1
    assert [h.key for h in await timed.holds_older_than(clock.now)] == ["c"]
    # A released key reserved again is a new hold, made now.
    await timed.reserve("a", "small", "p", MONTH, Amount(1.0), NONE)
    assert [h.key for h in await timed.holds_older_than(clock.now)] == ["c"]


@pytest.mark.parametrize("order", ["release first", "settle first", "together"])
async def test_a_janitor_release_racing_a_settle_bills_once_and_stays_settled(
    book: BudgetStore, order: str
) -> None:
    await book.reserve("a", "small", "p", MONTH, Amount(3.0), gpu(10.0))
    if order == "release first":
        await book.release("a")
        assert await book.settle("a", "small", MONTH, Amount(1.0))
    elif order == "settle first":
        assert await book.settle("a", "small", MONTH, Amount(1.0))
        assert await book.release("a") is None
    else:
        await asyncio.gather(book.release("a"), book.settle("a", "small", MONTH, Amount(1.0)))
    assert await spent(book) == Amount(1.0)
    assert await reserved(book) == Amount()
    assert await book.open_reservations() == 0
    assert await book.holds_older_than(time.time() + 3600) == []
    await book.reserve("a", "small", "p", MONTH, Amount(3.0), gpu(10.0))  # settled: holds nothing
    assert await reserved(book) == Amount()


def test_an_unknown_scheme_is_refused_naming_the_setting() -> None:
    with pytest.raises(StoreUrlError, match=r"gateway\.stores\.budgets.*memory://.*redis://"):
        open_budget_store("sqlite:///tmp/budgets.db")  # no SQLite ledger


async def test_opens_redis_from_its_url(redis_server: RedisServer) -> None:
    book = open_budget_store(redis_server.url)
    assert isinstance(book, RedisBudgetStore)
    name = f"open-{uuid.uuid4().hex}"
    assert await book.settle(name, name, MONTH, Amount(0.5, 7))
    assert not await book.settle(name, name, MONTH, Amount(0.5, 7))
    assert await spent(book, name) == Amount(0.5, 7)
    await book.close()


def test_a_redis_settlement_is_kept_into_the_next_month_and_at_least_a_day() -> None:
    start_of_january = 1798761600  # 2027-01-01T00:00:00Z
    assert settled_expiry("2026-11", 0.0) == start_of_january
    assert settled_expiry("2026-12", 0.0) == start_of_january + 31 * 86_400
    assert settled_expiry("2020-01", 1_800_000_000.0) == 1_800_000_000 + 86_400


async def test_redis_holds_made_before_creation_times_count_from_when_first_seen(
    redis_server: RedisServer,
) -> None:
    clock = Clock()
    prefix = key("budgets", f"test-{uuid.uuid4().hex}")
    book = RedisBudgetStore(open_redis(redis_server.url), prefix=prefix, clock=clock)
    try:
        start = clock.now
        await book.reserve("old", "small", "p", MONTH, Amount(1.0), NONE)
        await book.reserve("new", "small", "p", MONTH, Amount(1.0), NONE)
        raw = open_redis(redis_server.url)
        try:  # as an older gateway left it: no creation time for "old"
            await raw.zrem(f"{prefix}:since", "old")
        finally:
            await raw.aclose()
        clock.now = start + 50
        assert await book.holds_older_than(start + 1) == [AgedHold("new", "small", start)]
        assert await book.holds_older_than(start + 51) == [
            AgedHold("new", "small", start),
            AgedHold("old", "small", start + 50),
        ]
        assert await book.release("old") is not None
        assert await book.holds_older_than(start + 51) == [AgedHold("new", "small", start)]
    finally:
        await book.close()

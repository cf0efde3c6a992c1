"""One contract for the job store (jobs, the priority queue, run leases), run against every
implementation (SQLite, memory, and Redis: a real redis-server, a fresh key namespace per
store). Only the Protocol's operations are used, and time is the ``now`` each call is given
(a fake clock).

What a shared store must guarantee is pinned here: strict priority and FIFO with exact
positions, one atomic claim that never lets a job overtake the head, depth limits that hold
under concurrent admissions, leases that lapse, and exactly one way to a terminal status.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job, JobError, JobStatus, route_key
from render_gateway.core.lanes import Lane
from render_gateway.core.usage_records import UsageRecord, build_record
from render_gateway.stores.jobs import (
    CancelResult,
    IdempotencyConflict,
    JobFilter,
    JobStore,
    LaneSnapshot,
    QueueFull,
    open_job_store,
)
from render_gateway.stores.redis_client import key as redis_key
from render_gateway.stores.redis_jobs import open_redis_job_store

QUEUED = frozenset({JobStatus.queued})
RUNNING = frozenset({JobStatus.running})
ROUTE_A = {"family": "sd", "model": "a"}
ROUTE_B = {"family": "sd", "model": "b"}
A, B = route_key(ROUTE_A), route_key(ROUTE_B)
EVERY_ROUTE = frozenset({A, B})
# Far above anything a test queues: the limits are only in the way where a test says so.
NO_LIMIT = 1_000_000


@dataclass
class Backend:
    # A fresh, empty, not yet opened store each call (a new file; a new key prefix for Redis).
    make: Callable[[], JobStore]

    async def open(self) -> JobStore:
        store = self.make()
        opened = await store.open()
        assert opened.orphaned == () and opened.queued == 0
        return store


def _sqlite_backend(tmp_path: Path) -> Backend:
    numbers = itertools.count()

    def make() -> JobStore:
        return open_job_store(f"sqlite://{quote(str(tmp_path / f'jobs-{next(numbers)}.db'))}")

    return Backend(make)


def _redis_backend(url: str) -> Backend:
    def make() -> JobStore:
        fresh = uuid.uuid4().hex  # each store its own namespace: it starts empty
        return open_redis_job_store(
            url, namespace=redis_key("jobs", fresh), usage_namespace=redis_key("usage", fresh)
        )

    return Backend(make)


@pytest.fixture(params=["sqlite", "memory", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return _sqlite_backend(tmp_path)
    if request.param == "redis":
        return _redis_backend(request.getfixturevalue("redis_server").url)
    return Backend(lambda: open_job_store("memory://"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[JobStore]:
    opened = await backend.open()
    yield opened
    await opened.close()


def job(
    lane: Lane = Lane.normal,
    customer: str = "c1",
    route: dict[str, str] = ROUTE_A,
    **changes: Any,
) -> Job:
    base = Job(id=new_job_id(), customer_id=customer, lane=lane,
               request={**route, "prompt": "x"}, created_at=time.time())  # fmt: skip
    return base.evolve(**changes)


async def submit(store: JobStore, item: Job) -> Job:
    stored, created = await store.submit(
        item, max_queued_for_customer=NO_LIMIT, max_queued_total=NO_LIMIT
    )
    assert created
    return stored


async def claim(
    store: JobStore,
    now: float = 1000.0,
    runnable: frozenset[str] = EVERY_ROUTE,
    served: frozenset[str] = EVERY_ROUTE,
    holder: str = "replica-1",
    lease_seconds: float = 30.0,
) -> Job | None:
    return await store.claim(
        now, runnable=runnable, served=served, holder=holder, lease_seconds=lease_seconds
    )


async def positions(store: JobStore, items: list[Job]) -> list[int | None]:
    return [await store.position(item.id) for item in items]


def usage_record(request_id: str) -> UsageRecord:
    now = time.time()
    return build_record(
        request_id=request_id, customer_id="c1", plan="default", tier="async",
        modality="image", family="sd", model="a", created_at=now - 2, started_at=now - 1,
        ended_at=now, outcome="success", parameters={"gpu_seconds": 1.0}, unit_price=0.01,
        currency="USD",
    )  # fmt: skip


def usage_head(store: JobStore) -> int:
    head = store.usage_log.head()
    # The SQLite stream keeps a read connection per calling thread; closing it is cleanup.
    close = getattr(store.usage_log, "close_thread_connection", None)
    if close is not None:
        close()
    return head


# ------------------------------------------------------------------ admission and reads


async def test_submit_get_positions_and_depth_follow_the_lanes(store: JobStore) -> None:
    low, normal1, high, normal2 = job(Lane.low), job(), job(Lane.high), job()
    for item in (low, normal1, high, normal2):
        assert (await submit(store, item)).id == item.id
    assert await positions(store, [high, normal1, normal2, low]) == [0, 1, 2, 3]
    assert await store.depth() == {"high": 1, "normal": 2, "low": 1}
    assert await store.queued_for("c1") == 4
    assert await store.queued_for("nobody") == 0
    assert await store.get(normal1.id) == normal1
    assert await store.get("j_missing") is None
    assert await store.position("j_missing") is None


async def test_an_empty_store(store: JobStore) -> None:
    assert await store.depth() == {"high": 0, "normal": 0, "low": 0}
    assert await claim(store) is None
    assert await store.unsettled() == []
    assert await store.expired_queued(time.time()) == []
    assert await store.expired_runs(time.time()) == []


async def test_a_new_job_must_be_queued(store: JobStore) -> None:
    with pytest.raises(ValueError, match="queued"):
        await store.submit(job(status=JobStatus.running), max_queued_for_customer=9,
                           max_queued_total=9)  # fmt: skip


async def test_idempotency_key(store: JobStore) -> None:
    first = job(idempotency_key="k1", request_digest="d1")
    await submit(store, first)
    again, created = await store.submit(
        job(idempotency_key="k1", request_digest="d1"),
        max_queued_for_customer=NO_LIMIT,
        max_queued_total=NO_LIMIT,
    )
    assert not created and again.id == first.id
    assert (await store.depth())["normal"] == 1
    with pytest.raises(IdempotencyConflict) as conflict:
        await store.submit(job(idempotency_key="k1", request_digest="d2"),
                           max_queued_for_customer=NO_LIMIT, max_queued_total=NO_LIMIT)  # fmt: skip
    assert conflict.value.existing.id == first.id
    other = await submit(store, job(customer="c2", idempotency_key="k1", request_digest="d2"))
    assert other.id != first.id


async def test_depth_limits_hold_under_concurrent_admissions(store: JobStore) -> None:
    async def admit(customer: str) -> Job | QueueFull:
        try:
            stored, created = await store.submit(
                job(customer=customer), max_queued_for_customer=5, max_queued_total=8
            )
        except QueueFull as full:
            return full
        assert created
        return stored

    mine = await asyncio.gather(*(admit("c1") for _ in range(20)))
    assert sum(isinstance(r, Job) for r in mine) == 5
    assert {(r.kind, r.limit) for r in mine if isinstance(r, QueueFull)} == {("customer", 5)}
    assert await store.queued_for("c1") == 5

    others = await asyncio.gather(*(admit(f"c{n}") for n in range(2, 12)))
    assert sum(isinstance(r, Job) for r in others) == 3  # the total of 8 is reached
    assert {(r.kind, r.limit) for r in others if isinstance(r, QueueFull)} == {("total", 8)}
    assert sum((await store.depth()).values()) == 8


async def test_an_idempotent_repeat_is_answered_even_when_the_queue_is_full(
    store: JobStore,
) -> None:
    first = job(idempotency_key="k", request_digest="d")
    await store.submit(first, max_queued_for_customer=1, max_queued_total=1)
    again, created = await store.submit(
        job(idempotency_key="k", request_digest="d"), max_queued_for_customer=1, max_queued_total=1
    )
    assert not created and again.id == first.id
    with pytest.raises(QueueFull):
        await store.submit(job(), max_queued_for_customer=1, max_queued_total=1)


async def test_jobs_that_leave_the_queue_free_their_room(store: JobStore) -> None:
    limits = {"max_queued_for_customer": 2, "max_queued_total": 2}
    first, second = job(), job()
    await store.submit(first, **limits)
    await store.submit(second, **limits)
    with pytest.raises(QueueFull):
        await store.submit(job(), **limits)
    assert (await claim(store)) is not None  # running jobs are not queued
    await store.finish(second.id, JobStatus.cancelled, 1.0, expect=QUEUED)
    await store.submit(job(), **limits)
    await store.submit(job(), **limits)
    with pytest.raises(QueueFull):
        await store.submit(job(), **limits)
    # A requeued job comes back whatever the limits: it was admitted already.
    assert await store.requeue(first.id, count_retry=False) is not None
    assert await store.queued_for("c1") == 3


# ----------------------------------------------------------------------------- claims


async def test_claims_follow_strict_priority_then_fifo(store: JobStore) -> None:
    items = [job(Lane.low), job(), job(Lane.high), job(), job(Lane.high)]
    for item in items:
        await submit(store, item)
    order = []
    while (claimed := await claim(store, now=500.0)) is not None:
        assert claimed.status is JobStatus.running and claimed.started_at == 500.0
        assert await store.position(claimed.id) is None
        order.append(claimed.id)
    assert order == [items[2].id, items[4].id, items[1].id, items[3].id, items[0].id]
    assert await store.depth() == {"high": 0, "normal": 0, "low": 0}


async def test_the_head_waits_for_its_own_route_and_is_never_overtaken(store: JobStore) -> None:
    head, behind = job(route=ROUTE_A), job(route=ROUTE_B)
    await submit(store, head)
    await submit(store, behind)
    # Route A is served but has no capacity: nothing is claimed, though B could run.
    assert await claim(store, runnable=frozenset({B})) is None
    assert await positions(store, [head, behind]) == [0, 1]
    assert (await store.get(head.id)).status is JobStatus.queued  # type: ignore[union-attr]
    claimed = await claim(store, runnable=frozenset({A}))
    assert claimed is not None and claimed.id == head.id
    second = await claim(store, runnable=frozenset({B}))
    assert second is not None and second.id == behind.id


async def test_a_blocked_high_head_holds_back_every_lower_lane(store: JobStore) -> None:
    normal = job(Lane.normal, route=ROUTE_B)
    high = job(Lane.high, route=ROUTE_A)
    await submit(store, normal)
    await submit(store, high)
    assert await claim(store, runnable=frozenset({B})) is None
    assert await store.position(normal.id) == 1


async def test_a_head_no_backend_serves_is_claimed_for_the_caller_to_fail(
    store: JobStore,
) -> None:
    orphan, runnable = job(route=ROUTE_B), job(route=ROUTE_A)
    await submit(store, orphan)
    await submit(store, runnable)
    # B is served by nobody any more: its job must not block the queue.
    claimed = await claim(store, runnable=frozenset(), served=frozenset({A}))
    assert claimed is not None and claimed.id == orphan.id
    assert claimed.status is JobStatus.running
    failed = await store.finish(
        orphan.id,
        JobStatus.error,
        1001.0,
        expect=RUNNING,
        error=JobError("backend_not_found", "no backend serves sd/b any more", False),
    )
    assert failed is not None and failed.error is not None
    assert await claim(store, runnable=frozenset(), served=frozenset({A})) is None


async def test_concurrent_claims_take_each_job_once(store: JobStore) -> None:
    items = [job(lane) for lane in (Lane.low, Lane.normal, Lane.high) for _ in range(10)]
    for item in items:
        await submit(store, item)
    claimed = await asyncio.gather(*(claim(store) for _ in range(40)))
    ids = [c.id for c in claimed if c is not None]
    assert len(ids) == 30 and set(ids) == {i.id for i in items}
    assert sum(c is None for c in claimed) == 10


async def test_concurrent_claims_and_queued_cancels_never_both_win(store: JobStore) -> None:
    items = [job() for _ in range(50)]
    for item in items:
        await submit(store, item)
    claims = [claim(store) for _ in range(25)]
    cancels = [store.finish(i.id, JobStatus.cancelled, 1.0, expect=QUEUED) for i in items]
    results = await asyncio.gather(*claims, *cancels)
    claimed = {j.id for j in results[:25] if isinstance(j, Job)}
    for item, cancelled in zip(items, results[25:], strict=True):
        stored = await store.get(item.id)
        assert stored is not None
        if item.id in claimed:
            assert cancelled is None and stored.status is JobStatus.running
        else:
            assert isinstance(cancelled, Job) and stored.status is JobStatus.cancelled
    assert sum((await store.depth()).values()) == 0


# ----------------------------------------------------------------------------- leases


async def test_heartbeats_extend_the_holders_leases(store: JobStore) -> None:
    first, second = job(), job()
    await submit(store, first)
    await submit(store, second)
    await claim(store, now=100.0, holder="a", lease_seconds=10.0)
    await claim(store, now=100.0, holder="b", lease_seconds=10.0)
    assert await store.heartbeat([first.id, second.id, "j_nope"], "a", 105.0, 10.0) == {first.id}
    assert await store.expired_runs(110.5) == [await store.get(second.id)]  # b never renewed
    assert await store.expired_runs(114.0) == [await store.get(second.id)]
    lapsed = await store.expired_runs(115.5)
    assert {j.id for j in lapsed} == {first.id, second.id}
    assert all(j.status is JobStatus.running for j in lapsed)


async def test_a_lapsed_lease_is_lost_not_renewed(store: JobStore) -> None:
    item = job()
    await submit(store, item)
    await claim(store, now=100.0, holder="a", lease_seconds=10.0)
    assert await store.heartbeat([item.id], "a", 110.0, 10.0) == {item.id}  # just in time
    assert await store.heartbeat([item.id], "a", 120.5, 10.0) == set()
    assert [j.id for j in await store.expired_runs(120.5)] == [item.id]


async def test_a_run_that_ended_holds_no_lease(store: JobStore) -> None:
    done, back = job(), job()
    await submit(store, done)
    await submit(store, back)
    await claim(store, now=100.0, holder="a", lease_seconds=10.0)
    await claim(store, now=100.0, holder="a", lease_seconds=10.0)
    await store.finish(done.id, JobStatus.complete, 101.0, expect=RUNNING)
    await store.requeue(back.id, count_retry=True)
    assert await store.heartbeat([done.id, back.id], "a", 102.0, 10.0) == set()
    assert await store.expired_runs(1000.0) == []
    assert await store.heartbeat([], "a", 102.0, 10.0) == set()


async def test_a_reclaimed_job_is_held_by_its_new_holder_only(store: JobStore) -> None:
    item = job()
    await submit(store, item)
    await claim(store, now=100.0, holder="a", lease_seconds=10.0)
    (lapsed,) = await store.expired_runs(111.0)
    assert await store.requeue(lapsed.id, count_retry=True) is not None
    again = await claim(store, now=112.0, holder="b", lease_seconds=10.0)
    assert again is not None and again.retries == 1
    assert await store.heartbeat([item.id], "a", 113.0, 10.0) == set()
    assert await store.heartbeat([item.id], "b", 113.0, 10.0) == {item.id}


async def test_a_late_holders_result_is_refused_once_another_holds_the_run(
    store: JobStore,
) -> None:
    item = job()
    await submit(store, item)
    first = await claim(store, now=100.0, holder="a", lease_seconds=10.0)
    assert first is not None and first.run_holder == "a"
    (lapsed,) = await store.expired_runs(111.0)
    assert lapsed.run_holder == "a"
    # The recovery is fenced by the lapsed holder: it requeues a's run, once.
    assert await store.requeue(lapsed.id, count_retry=True, holder="a") is not None
    again = await claim(store, now=112.0, holder="b", lease_seconds=10.0)
    assert again is not None and again.run_holder == "b"
    # a wakes up (paused, partitioned) and reports its run: refused, nothing changes.
    record = usage_record(item.id)
    late = await store.finish(
        item.id, JobStatus.complete, 113.0, expect=RUNNING, usage=record, holder="a"
    )
    assert late is None
    assert await store.requeue(item.id, count_retry=True, holder="a") is None
    # A second sweep that read the old lapsed run does not touch b's run either.
    assert await store.requeue(lapsed.id, count_retry=True, holder=lapsed.run_holder) is None
    stored = await store.get(item.id)
    assert stored is not None and stored.status is JobStatus.running
    assert stored.run_holder == "b" and stored.retries == 1
    assert usage_head(store) == 0  # the late result billed nothing
    done = await store.finish(
        item.id, JobStatus.complete, 114.0, expect=RUNNING, usage=record, holder="b"
    )
    assert done is not None and done.run_holder is None
    assert usage_head(store) == 1


# ------------------------------------------------------------------------------ cancels


async def test_request_cancel_classifies_and_marks(store: JobStore) -> None:
    running, queued = job(), job()
    await submit(store, running)
    await submit(store, queued)
    await claim(store)
    assert await store.request_cancel(queued.id, "someone-else") is CancelResult.not_found
    assert await store.request_cancel("j_nope", "c1") is CancelResult.not_found
    assert await store.request_cancel(queued.id, "c1") is CancelResult.queued
    still = await store.get(queued.id)
    assert still is not None and still.status is JobStatus.queued  # the caller settles it
    assert await store.position(queued.id) == 0
    assert await store.request_cancel(running.id, "c1") is CancelResult.running
    marked = await store.get(running.id)
    assert marked is not None and marked.cancel_requested and marked.status is JobStatus.running
    await store.finish(queued.id, JobStatus.cancelled, 2.0, expect=QUEUED)
    await store.finish(running.id, JobStatus.cancelled, 2.0, expect=RUNNING)
    for item in (queued, running):
        assert await store.request_cancel(item.id, "c1") is CancelResult.terminal
    assert await store.position(queued.id) is None


async def test_a_cancel_requested_run_stays_marked_when_it_is_requeued(store: JobStore) -> None:
    item = job()
    await submit(store, item)
    await claim(store)
    assert await store.request_cancel(item.id, "c1") is CancelResult.running
    requeued = await store.requeue(item.id, count_retry=True)
    assert requeued is not None and requeued.cancel_requested
    again = await claim(store)
    assert again is not None and again.cancel_requested  # the caller cancels it, not runs it


async def test_a_claim_that_races_a_queued_cancel_returns_the_job_marked(store: JobStore) -> None:
    item = job()
    await submit(store, item)
    assert await store.request_cancel(item.id, "c1") is CancelResult.queued
    claimed = await claim(store)  # came before the caller's settle
    assert claimed is not None and claimed.cancel_requested
    assert await store.finish(item.id, JobStatus.cancelled, 1.0, expect=QUEUED) is None


# ------------------------------------------------------------------------------ finish


async def test_finish_records_the_end_and_merges_extra(store: JobStore) -> None:
    item = job(extra={"kept": 1, "replaced": "old"})
    await submit(store, item)
    await claim(store, now=100.0)
    done = await store.finish(
        item.id, JobStatus.complete, 105.0, expect=RUNNING, outputs=("a_1", "a_2"), seed=7,
        extra={"replaced": "new", "added": [1, 2]},
    )  # fmt: skip
    assert done is not None and done.status is JobStatus.complete
    assert (done.outputs, done.seed, done.completed_at, done.started_at) == (
        ("a_1", "a_2"), 7, 105.0, 100.0,
    )  # fmt: skip
    assert done.extra == {"kept": 1, "replaced": "new", "added": [1, 2]}
    assert await store.get(item.id) == done
    assert await store.unsettled() == []


async def test_extra_merges_as_a_json_merge_patch(store: JobStore) -> None:
    # RFC 7396: objects merge key by key, a null removes a key, anything else replaces.
    item = job(extra={"gone": 1, "nested": {"kept": 1, "replaced": 1}, "list": [1]})
    await submit(store, item)
    await claim(store)
    requeued = await store.requeue(
        item.id, extra={"gone": None, "nested": {"replaced": 2, "added": 3}}, count_retry=False
    )
    assert requeued is not None
    assert requeued.extra == {"nested": {"kept": 1, "replaced": 2, "added": 3}, "list": [1]}
    await claim(store)
    done = await store.finish(item.id, JobStatus.complete, 2.0, expect=RUNNING,
                              extra={"list": [2, 3], "nested": None})  # fmt: skip
    assert done is not None and done.extra == {"list": [2, 3]}


async def test_finish_appends_the_usage_record_in_the_same_step(store: JobStore) -> None:
    item, other = job(), job()
    await submit(store, item)
    await submit(store, other)
    await claim(store)
    before = usage_head(store)
    ended = await store.finish(
        item.id, JobStatus.complete, 2.0, expect=RUNNING, usage=usage_record(item.id)
    )
    assert ended is not None and usage_head(store) == before + 1
    # A finish that changes nothing writes no record either.
    assert (
        await store.finish(
            other.id, JobStatus.complete, 2.0, expect=RUNNING, usage=usage_record(other.id)
        )
        is None
    )
    assert usage_head(store) == before + 1


async def test_finish_is_exactly_once(store: JobStore) -> None:
    item = job()
    await submit(store, item)
    await claim(store)
    results = await asyncio.gather(
        store.finish(item.id, JobStatus.complete, 2.0, expect=RUNNING, outputs=("a_1",)),
        store.finish(item.id, JobStatus.error, 2.0, expect=RUNNING,
                     error=JobError("timeout", "too slow", True)),
    )  # fmt: skip
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and results.count(None) == 1
    assert await store.get(item.id) == winners[0]
    again = await store.finish(item.id, JobStatus.cancelled, 3.0, expect=RUNNING)
    assert again is None and await store.get(item.id) == winners[0]


async def test_finish_only_from_an_expected_status(store: JobStore) -> None:
    item = job()
    await submit(store, item)
    assert await store.finish(item.id, JobStatus.complete, 1.0, expect=RUNNING) is None
    assert await store.position(item.id) == 0  # untouched
    expired = await store.finish(
        item.id, JobStatus.cancelled, 1.0, expect=QUEUED,
        error=JobError("ttl_expired", "the job's ttl passed while it was queued", False),
    )  # fmt: skip
    assert expired is not None and expired.status is JobStatus.cancelled
    assert expired.error is not None and expired.error.code == "ttl_expired"
    assert await store.position(item.id) is None
    with pytest.raises(KeyError):
        await store.finish("j_nope", JobStatus.complete, 1.0, expect=RUNNING)
    with pytest.raises(ValueError, match="terminal"):
        await store.finish(item.id, JobStatus.running, 1.0, expect=QUEUED)


async def test_every_end_is_unfollowed_until_its_follow_ups_are_confirmed(
    store: JobStore,
) -> None:
    # finish lists the job in its own commit; only followed_up takes it off. A queued job that
    # is cancelled and a run that ends both count; a job that did not end is never listed.
    ran, cancelled, waiting = job(), job(), job()
    for item in (ran, cancelled, waiting):
        await submit(store, item)
    claimed = await claim(store)
    assert claimed is not None and claimed.id == ran.id
    assert await store.unfollowed(float("inf"), 10) == []
    await store.finish(ran.id, JobStatus.complete, 20.0, expect=RUNNING, outputs=("a_1",))
    await store.finish(cancelled.id, JobStatus.cancelled, 10.0, expect=QUEUED)
    listed = await store.unfollowed(float("inf"), 10)
    assert [j.id for j in listed] == [cancelled.id, ran.id]  # oldest end first
    assert listed[1].status is JobStatus.complete and listed[1].outputs == ("a_1",)
    # Only the ends before the bound, at most the limit.
    assert [j.id for j in await store.unfollowed(20.0, 10)] == [cancelled.id]
    assert [j.id for j in await store.unfollowed(float("inf"), 1)] == [cancelled.id]
    # A finish that changes nothing lists nothing again.
    await store.followed_up(cancelled.id)
    assert await store.finish(cancelled.id, JobStatus.cancelled, 30.0, expect=QUEUED) is None
    assert [j.id for j in await store.unfollowed(float("inf"), 10)] == [ran.id]
    await store.followed_up(ran.id)
    await store.followed_up(ran.id)  # idempotent: two sweeps may confirm the same job
    assert await store.unfollowed(float("inf"), 10) == []
    assert waiting.id not in {j.id for j in await store.unfollowed(float("inf"), 10)}


async def test_ttl_expiry_is_reported_not_applied(store: JobStore) -> None:
    soon, later, forever = job(expires_at=50.0), job(expires_at=5000.0), job()
    for item in (soon, later, forever):
        await submit(store, item)
    assert await store.expired_queued(49.0) == []
    assert await store.expired_queued(50.0) == [soon.id]
    assert await store.position(soon.id) == 0  # the caller settles it
    await store.finish(soon.id, JobStatus.cancelled, 50.0, expect=QUEUED)
    assert await store.expired_queued(100.0) == []
    assert await positions(store, [later, forever]) == [0, 1]
    await claim(store)  # a running job is past its queue ttl for good
    assert await store.expired_queued(9999.0) == []


# ----------------------------------------------------------------------------- requeue


async def test_a_requeued_job_goes_back_to_its_place_in_its_lane(store: JobStore) -> None:
    older, newer, newest = job(), job(), job()
    high = job(Lane.high)
    for item in (older, newer):
        await submit(store, item)
    running = await claim(store)
    assert running is not None and running.id == older.id
    await submit(store, newest)
    await submit(store, high)
    requeued = await store.requeue(older.id, extra={"drained_runs": [1]}, count_retry=False)
    assert requeued is not None and requeued.status is JobStatus.queued
    assert requeued.retries == 0 and requeued.started_at is None
    assert requeued.extra["drained_runs"] == [1]
    assert await positions(store, [high, older, newer, newest]) == [0, 1, 2, 3]
    assert await store.requeue(older.id, count_retry=False) is None  # not running: no-op
    assert await store.requeue("j_nope", count_retry=False) is None
    order = [(await claim(store)) for _ in range(4)]
    assert [j.id for j in order if j is not None] == [high.id, older.id, newer.id, newest.id]


async def test_a_lost_run_requeued_spends_a_retry(store: JobStore) -> None:
    item = job()
    await submit(store, item)
    await claim(store)
    first = await store.requeue(item.id, count_retry=True)
    assert first is not None and first.retries == 1
    await claim(store)
    second = await store.requeue(item.id, count_retry=True)
    assert second is not None and second.retries == 2


async def test_unsettled_lists_queued_and_running_oldest_first(store: JobStore) -> None:
    items = [job(Lane.low), job(Lane.high), job()]
    for item in items:
        await submit(store, item)
    await claim(store)  # the high one
    done = await claim(store)
    assert done is not None
    await store.finish(done.id, JobStatus.complete, 1.0, expect=RUNNING)
    unsettled = await store.unsettled()
    assert [j.id for j in unsettled] == [items[0].id, items[1].id]
    assert [j.status for j in unsettled] == [JobStatus.queued, JobStatus.running]


async def test_listed_pages_one_customers_jobs_of_one_modality(store: JobStore) -> None:
    """A cursor page over the customer's own jobs of a modality, in admission order or newest
    first, whatever their status (lanes do not reorder it); others' jobs, another modality's
    and a request naming none are not in it, and an ``after`` outside it is a KeyError."""

    def of(modality: str | None, customer: str = "c1", lane: Lane = Lane.normal) -> Job:
        request = {**ROUTE_A, "prompt": "x"} | ({"modality": modality} if modality else {})
        return job(lane, customer, request=request)

    videos = [of("video", lane=Lane.low), of("video", lane=Lane.high), of("video")]
    others = [of("image"), of("video", customer="c2"), of(None)]
    for item in [videos[0], others[0], videos[1], others[1], others[2], videos[2]]:
        await submit(store, item)
    running = await claim(store)  # the high one
    assert running is not None and running.id == videos[1].id
    await store.finish(running.id, JobStatus.complete, 1.0, expect=RUNNING)

    async def page(after: str | None = None, limit: int = 10, newest: bool = False) -> list[str]:
        jobs = await store.listed(VIDEOS_OF_C1, after=after, limit=limit, newest_first=newest)
        return [j.id for j in jobs]

    ids = [v.id for v in videos]
    assert await page() == ids
    assert await page(newest=True) == ids[::-1]
    assert await page(limit=2) == ids[:2]
    assert await page(after=ids[1]) == ids[2:]
    assert await page(after=ids[2]) == []
    assert await page(after=ids[1], newest=True) == ids[:1]
    assert await page(after=ids[2], limit=1, newest=True) == ids[1:2]
    assert await page(limit=0) == []
    listed = await store.listed(VIDEOS_OF_C1, after=None, limit=10, newest_first=False)
    assert [j.status for j in listed] == [JobStatus.queued, JobStatus.complete, JobStatus.queued]
    assert listed[1].request == running.request and listed[1].customer_id == "c1"
    images = JobFilter(customer_id="c1", modality="image")
    assert [j.id for j in await store.listed(images, after=None, limit=10,
                                             newest_first=True)] == [others[0].id]  # fmt: skip
    nobodys = JobFilter(customer_id="c3", modality="video")
    assert await store.listed(nobodys, after=None, limit=10, newest_first=True) == []
    for foreign in (others[0].id, others[1].id, others[2].id, new_job_id()):
        with pytest.raises(KeyError):
            await page(after=foreign)


VIDEOS_OF_C1 = JobFilter(customer_id="c1", modality="video")


async def test_listed_filters_by_customer_status_model_and_time(store: JobStore) -> None:
    """Without a modality a customer's jobs of every modality; without a customer everyone's
    (an admin's list). Status, family/model and the created_at range narrow the page, and a
    cursor stays valid after its job left the status filtered on (its scope is the customer)."""
    base = 1_000_000.0
    c1 = [
        job(customer="c1", route=ROUTE_A, created_at=base + 1),
        job(customer="c1", route=ROUTE_B, created_at=base + 2),
        job(customer="c1", route=ROUTE_A, created_at=base + 3),
    ]
    c2 = [job(customer="c2", route=ROUTE_B, created_at=base + 4)]
    for item in [c1[0], c1[1], c2[0], c1[2]]:
        await submit(store, item)
    first = await claim(store)  # c1[0], the head
    assert first is not None and first.id == c1[0].id

    async def ids(where: JobFilter, after: str | None = None, limit: int = 10) -> list[str]:
        jobs = await store.listed(where, after=after, limit=limit, newest_first=True)
        return [j.id for j in jobs]

    assert await ids(JobFilter(customer_id="c1")) == [c1[2].id, c1[1].id, c1[0].id]
    assert await ids(JobFilter()) == [c1[2].id, c2[0].id, c1[1].id, c1[0].id]
    assert await ids(JobFilter(), after=c2[0].id, limit=1) == [c1[1].id]
    queued = JobFilter(customer_id="c1", status=JobStatus.queued)
    assert await ids(queued) == [c1[2].id, c1[1].id]
    assert await ids(JobFilter(customer_id="c1", status=JobStatus.running)) == [c1[0].id]
    assert await ids(JobFilter(family="sd", model="b")) == [c2[0].id, c1[1].id]
    assert await ids(JobFilter(customer_id="c1", family="sd", model="a")) == [c1[2].id, c1[0].id]
    assert await ids(JobFilter(family="other", model="a")) == []
    window = JobFilter(created_from=base + 2, created_before=base + 4)
    assert await ids(window) == [c1[2].id, c1[1].id]  # from inclusive, before exclusive
    assert await ids(JobFilter(customer_id="c1", created_from=base + 3)) == [c1[2].id]
    # c1[2] ends: a page of queued jobs after it goes on all the same.
    assert await claim(store) is not None  # c1[1]
    assert await ids(queued, after=c1[2].id) == []
    assert await ids(JobFilter(customer_id="c1"), after=c1[2].id, limit=1) == [c1[1].id]
    with pytest.raises(KeyError):
        await ids(JobFilter(customer_id="c1"), after=c2[0].id)  # another customer's
    with pytest.raises(KeyError):
        await ids(JobFilter(), after=new_job_id())


async def test_listed_finds_matches_far_apart(store: JobStore) -> None:
    """A filter that matches few jobs in a long history still fills its page, in order (Redis
    walks its index in chunks: the matches lie several chunks apart)."""
    rare = [job(customer="c1", route=ROUTE_B) for _ in range(3)]
    common = [job(customer="c1") for _ in range(330)]
    order = [*common[:110], rare[0], *common[110:220], rare[1], *common[220:], rare[2]]
    for item in order:
        await submit(store, item)
    where = JobFilter(customer_id="c1", family="sd", model="b")
    page = await store.listed(where, after=None, limit=2, newest_first=True)
    assert [j.id for j in page] == [rare[2].id, rare[1].id]
    rest = await store.listed(where, after=page[-1].id, limit=2, newest_first=True)
    assert [j.id for j in rest] == [rare[0].id]
    oldest_first = await store.listed(where, after=None, limit=5, newest_first=False)
    assert [j.id for j in oldest_first] == [r.id for r in rare]


async def test_queue_snapshot_reports_depths_heads_and_running(store: JobStore) -> None:
    empty = await store.queue_snapshot()
    assert list(empty.lanes) == ["high", "normal", "low"]
    assert all(lane == LaneSnapshot(0, None) for lane in empty.lanes.values())
    assert empty.running == 0
    items = [
        job(Lane.normal, created_at=100.0),
        job(Lane.normal, created_at=200.0),
        job(Lane.low, created_at=50.0),
        job(Lane.high, created_at=300.0),
    ]
    for item in items:
        await submit(store, item)
    running = await claim(store)  # the high one
    assert running is not None and running.id == items[3].id
    snapshot = await store.queue_snapshot()
    assert snapshot.lanes == {
        "high": LaneSnapshot(0, None),
        "normal": LaneSnapshot(2, 100.0),
        "low": LaneSnapshot(1, 50.0),
    }
    assert snapshot.running == 1
    await store.finish(items[0].id, JobStatus.cancelled, 1.0, expect=QUEUED)
    await store.requeue(running.id, count_retry=False)
    snapshot = await store.queue_snapshot()
    assert snapshot.lanes["normal"] == LaneSnapshot(1, 200.0)
    assert snapshot.lanes["high"] == LaneSnapshot(1, 300.0)
    assert snapshot.running == 0


# ------------------------------------------------- exact positions against a model


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(Lane), st.sampled_from(["c1", "c2"])),
        st.tuples(st.just("claim"), st.sampled_from([A, B]), st.booleans()),
        st.tuples(st.just("requeue"), st.integers(0, 50), st.booleans()),
        st.tuples(st.just("cancel"), st.integers(0, 50), st.booleans()),
        st.tuples(st.just("finish"), st.integers(0, 50), st.booleans()),
    ),
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=OPERATIONS)
def test_positions_stay_exact_under_random_operations(
    backend: Backend, operations: list[tuple[Any, ...]]
) -> None:
    asyncio.run(_against_the_model(backend, operations))


async def _against_the_model(backend: Backend, operations: list[tuple[Any, ...]]) -> None:
    """The model: every admitted job's (lane, admission number), the queued set and the running
    set. Run order is (lane, admission number): a requeued job keeps its number."""
    store = await backend.open()
    try:
        admitted: dict[str, tuple[Lane, int, str, str]] = {}  # id -> lane, number, customer, route
        queued: set[str] = set()
        running: list[str] = []
        for number, operation in enumerate(operations):
            kind = operation[0]
            if kind == "submit":
                _, lane, customer = operation
                route = ROUTE_A if number % 3 else ROUTE_B
                item = await submit(store, job(lane, customer, route))
                admitted[item.id] = (lane, number, customer, route_key(route))
                queued.add(item.id)
            elif kind == "claim":
                _, blocked, served = operation
                order = sorted(queued, key=lambda i: admitted[i][:2])
                head_route = admitted[order[0]][3] if order else None
                # The blocked route has no capacity (but is served unless told otherwise).
                runnable = EVERY_ROUTE - {blocked}
                served_routes = EVERY_ROUTE if served else runnable
                claimed = await claim(store, runnable=runnable, served=served_routes)
                if order and (head_route != blocked or not served):
                    assert claimed is not None and claimed.id == order[0]
                    queued.remove(claimed.id)
                    running.append(claimed.id)
                else:
                    assert claimed is None
            elif kind in ("requeue", "finish") and running:
                _, pick, flag = operation
                job_id = running.pop(pick % len(running))
                if kind == "requeue":
                    assert await store.requeue(job_id, count_retry=flag) is not None
                    queued.add(job_id)
                else:
                    status = JobStatus.complete if flag else JobStatus.error
                    assert await store.finish(job_id, status, 1.0, expect=RUNNING) is not None
            elif kind == "cancel" and queued:
                _, pick, _ = operation
                job_id = sorted(queued)[pick % len(queued)]
                assert (
                    await store.request_cancel(job_id, admitted[job_id][2]) is CancelResult.queued
                )
                assert await store.finish(job_id, JobStatus.cancelled, 1.0, expect=QUEUED)
                queued.remove(job_id)

            order = sorted(queued, key=lambda i: admitted[i][:2])
            assert [await store.position(i) for i in order] == list(range(len(order)))
            for job_id in set(admitted) - queued:
                assert await store.position(job_id) is None
            depth = {lane.name: sum(admitted[i][0] is lane for i in queued) for lane in Lane}
            assert await store.depth() == depth
            for customer in ("c1", "c2"):
                expected = sum(admitted[i][2] == customer for i in queued)
                assert await store.queued_for(customer) == expected
    finally:
        await store.close()

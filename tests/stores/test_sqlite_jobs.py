"""The embedded job store on a real SQLite file: durability, order, positions, recovery."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job, JobError, JobStatus
from render_gateway.core.lanes import Lane
from render_gateway.stores.jobs import CancelResult, IdempotencyConflict, RecoveryPolicy
from render_gateway.stores.sqlite_jobs import SqliteJobStore

DRIVER = Path(__file__).resolve().parents[1] / "support" / "job_store_driver.py"


def job(lane: Lane = Lane.normal, customer: str = "c1", **changes: object) -> Job:
    base = Job(id=new_job_id(), customer_id=customer, lane=lane, request={"prompt": "x"},
               created_at=time.time())  # fmt: skip
    return base.evolve(**changes)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    opened = SqliteJobStore(tmp_path / "jobs.db")
    await opened.open(RecoveryPolicy.requeue)
    yield opened
    await opened.close()


async def reopen(
    path: Path, policy: RecoveryPolicy = RecoveryPolicy.requeue, max_retries: int = 2
) -> SqliteJobStore:
    again = SqliteJobStore(path)
    await again.open(policy, max_retries)
    return again


async def test_submit_get_and_positions_follow_lanes(store: SqliteJobStore) -> None:
    low, normal1, high, normal2 = job(Lane.low), job(), job(Lane.high), job()
    for item in (low, normal1, high, normal2):
        stored, created = await store.submit(item)
        assert created and stored.id == item.id
    assert [store.position(j.id) for j in (high, normal1, normal2, low)] == [0, 1, 2, 3]
    assert store.depth() == {"high": 1, "normal": 2, "low": 1}
    fetched = await store.get(normal1.id)
    assert fetched == normal1
    assert await store.get("j_missing") is None


async def test_claim_order_is_strict_priority_then_fifo(store: SqliteJobStore) -> None:
    jobs = [job(Lane.low), job(), job(Lane.high), job(), job(Lane.high)]
    for item in jobs:
        await store.submit(item)
    order = []
    while (claimed := await store.claim_next(time.time())) is not None:
        assert claimed.status is JobStatus.running and claimed.started_at is not None
        order.append(claimed.id)
    assert order == [jobs[2].id, jobs[4].id, jobs[1].id, jobs[3].id, jobs[0].id]


async def test_idempotency_key(store: SqliteJobStore) -> None:
    first = job(idempotency_key="k1", request_digest="d1")
    _stored, created = await store.submit(first)
    assert created
    again, created_again = await store.submit(job(idempotency_key="k1", request_digest="d1"))
    assert not created_again and again.id == first.id
    assert store.depth()["normal"] == 1
    with pytest.raises(IdempotencyConflict) as conflict:
        await store.submit(job(idempotency_key="k1", request_digest="d2"))
    assert conflict.value.existing.id == first.id
    other_customer, created_other = await store.submit(
        job(customer="c2", idempotency_key="k1", request_digest="d2")
    )
    assert created_other and other_customer.id != first.id


async def test_cancel_paths(store: SqliteJobStore) -> None:
    queued, running, mine = job(), job(), job()
    for item in (running, queued, mine):
        await store.submit(item)
    claimed = await store.claim_next(time.time())
    assert claimed is not None and claimed.id == running.id
    assert await store.cancel(queued.id, "someone-else", time.time()) is CancelResult.not_found
    assert await store.cancel("j_nope", "c1", time.time()) is CancelResult.not_found
    assert store.position(mine.id) == 1
    assert await store.cancel(queued.id, "c1", time.time()) is CancelResult.cancelled
    assert store.position(queued.id) is None and store.position(mine.id) == 0
    assert await store.cancel(running.id, "c1", time.time()) is CancelResult.running
    await store.finish(running.id, JobStatus.cancelled, time.time())
    assert await store.cancel(running.id, "c1", time.time()) is CancelResult.terminal
    assert await store.cancel(queued.id, "c1", time.time()) is CancelResult.terminal
    assert (await store.get(queued.id)).status is JobStatus.cancelled  # type: ignore[union-attr]


async def test_concurrent_cancel_and_claim_never_both_win(store: SqliteJobStore) -> None:
    items = [job() for _ in range(50)]
    for item in items:
        await store.submit(item)
    claims = [store.claim_next(time.time()) for _ in range(25)]
    cancels = [store.cancel(item.id, "c1", time.time()) for item in items]
    results = await asyncio.gather(*claims, *cancels)
    claimed = {j.id for j in results[:25] if j is not None}
    cancel_results = dict(zip([i.id for i in items], results[25:], strict=True))
    for job_id, outcome in cancel_results.items():
        stored = await store.get(job_id)
        assert stored is not None
        if job_id in claimed:
            assert outcome is CancelResult.running and stored.status is JobStatus.running
        else:
            assert outcome is CancelResult.cancelled and stored.status is JobStatus.cancelled
    assert len(store.depth()) == 3 and sum(store.depth().values()) == 0


async def test_finish_records_outputs_and_refuses_twice(store: SqliteJobStore) -> None:
    item = job()
    await store.submit(item)
    await store.claim_next(time.time())
    done = await store.finish(item.id, JobStatus.complete, time.time(), outputs=("a_1",), seed=7)
    assert done.status is JobStatus.complete and done.outputs == ("a_1",) and done.seed == 7
    with pytest.raises(ValueError, match="not running"):
        await store.finish(item.id, JobStatus.error, time.time(), error=JobError("x", "y", False))
    with pytest.raises(ValueError, match="terminal"):
        await store.finish(item.id, JobStatus.running, time.time())


async def test_ttl_expiry(store: SqliteJobStore) -> None:
    soon, later = job(expires_at=time.time() - 1), job(expires_at=time.time() + 3600)
    await store.submit(soon)
    await store.submit(later)
    assert await store.expire(time.time()) == [soon.id]
    expired = await store.get(soon.id)
    assert expired is not None and expired.status is JobStatus.cancelled
    assert expired.error is not None and expired.error.code == "ttl_expired"
    assert store.position(later.id) == 0


async def test_reopen_keeps_order_and_recovers_running_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = await reopen(path)
    items = [job(Lane.low), job(), job(Lane.high), job(), job()]
    for item in items:
        await first.submit(item)
    running = await first.claim_next(time.time())  # the high one
    assert running is not None and running.id == items[2].id
    before = [
        j.id
        for j in sorted(
            items, key=lambda j: first.position(j.id) if first.position(j.id) is not None else -1
        )
    ]
    await first.close()

    second = await reopen(path)
    # The running job is queued again, ahead of the others (high lane), retries + 1.
    recovered = await second.get(running.id)
    assert recovered is not None and recovered.status is JobStatus.queued and recovered.retries == 1
    assert second.position(running.id) == 0
    assert [second.position(j) for j in before] == list(range(len(items)))
    await second.close()


async def test_requeue_after_a_drain_keeps_retries_and_the_place_in_the_lane(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    first = await reopen(path)
    older, newer = job(), job()
    await first.submit(older)
    await first.submit(newer)
    running = await first.claim_next(time.time())
    assert running is not None and running.id == older.id
    requeued = await first.requeue(older.id, {"drained_runs": [{"gpu_seconds": 0.5}]})
    assert requeued is not None and requeued.status is JobStatus.queued
    assert requeued.retries == 0 and requeued.started_at is None
    assert requeued.extra["drained_runs"] == [{"gpu_seconds": 0.5}]
    assert await first.requeue(older.id) is None  # not running any more: nothing to put back
    assert first.position(older.id) is not None
    await first.close()

    second = await reopen(path)  # a clean restart: no recovery, same retries, same order
    again = await second.get(older.id)
    assert again is not None and again.status is JobStatus.queued and again.retries == 0
    assert [second.position(j.id) for j in (older, newer)] == [0, 1]
    await second.close()


async def test_recovery_policy_fail_and_retry_cap(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = await reopen(path)
    item = job()
    await first.submit(item)
    await first.claim_next(time.time())
    await first.close()
    failing = await reopen(path, RecoveryPolicy.fail)
    failed = await failing.get(item.id)
    assert failed is not None and failed.status is JobStatus.error
    assert failed.error == JobError(
        "interrupted", "the gateway stopped while the job was running", True
    )
    await failing.close()

    capped_path = tmp_path / "capped.db"
    capped = await reopen(capped_path, max_retries=0)
    other = job()
    await capped.submit(other)
    await capped.claim_next(time.time())
    await capped.close()
    capped = await reopen(capped_path, max_retries=0)
    result = await capped.get(other.id)
    assert result is not None and result.status is JobStatus.error  # no retries left
    await capped.close()


async def test_group_commit_shares_commits(store: SqliteJobStore) -> None:
    before = store.commits
    await asyncio.gather(*(store.submit(job()) for _ in range(500)))
    assert sum(store.depth().values()) == 500
    assert store.commits - before <= 50  # many submissions per fsync, not one each


def test_kill_9_loses_no_acknowledged_job(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), str(path), "24"], stdout=subprocess.PIPE, env=env
    )
    acknowledged: list[str] = []
    running: list[str] = []
    assert driver.stdout is not None
    while len(acknowledged) < 400:
        line = driver.stdout.readline().decode().split()
        assert line, "the driver stopped early"
        (acknowledged if line[0] == "ack" else running).append(line[1])
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()

    async def check() -> None:
        store = await reopen(path, max_retries=5)
        try:
            for job_id in acknowledged:
                stored = await store.get(job_id)
                assert stored is not None, f"acknowledged job {job_id} was lost"
            # Every acknowledged job that was not started is queued; lanes keep their order.
            queued = [j for j in acknowledged if store.position(j) is not None]
            assert set(queued) | set(running) >= set(acknowledged)
            by_lane: dict[Lane, list[int]] = {}
            for job_id in queued:
                stored = await store.get(job_id)
                assert stored is not None
                position = store.position(job_id)
                assert position is not None
                by_lane.setdefault(stored.lane, []).append(position)
            for positions in by_lane.values():
                assert positions == sorted(positions)
            for job_id in running:  # started before the kill: requeued with retries + 1
                stored = await store.get(job_id)
                assert stored is not None and stored.status is JobStatus.queued
                assert stored.retries == 1
        finally:
            await store.close()

    asyncio.run(check())

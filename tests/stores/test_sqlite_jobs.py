"""What only the embedded job store has: a SQLite file one process owns, group commit, durability
through kill -9, what a reopen finds, and the migration of files older builds wrote. The
behaviour every implementation shares is in tests/contracts/test_jobs.py."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job, JobStatus, route_key
from render_gateway.core.lanes import Lane
from render_gateway.stores.jobs import QueueFull
from render_gateway.stores.sqlite_jobs import SCHEMA_VERSION, SqliteJobStore
from render_gateway.stores.sqlite_usage_log import USAGE_SCHEMA

DRIVER = Path(__file__).resolve().parents[1] / "support" / "job_store_driver.py"
REQUEST = {"family": "sd", "model": "tiny"}
ROUTES = frozenset({route_key(REQUEST)})
QUEUED = frozenset({JobStatus.queued})
RUNNING = frozenset({JobStatus.running})
UNLIMITED = {"max_queued_for_customer": 10**9, "max_queued_total": 10**9}

# The jobs table as schema 1 (builds before run leases) created it, verbatim.
SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    lane INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    retries INTEGER NOT NULL DEFAULT 0,
    seed INTEGER,
    outputs TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    idempotency_key TEXT,
    request_digest TEXT,
    expires_at REAL,
    webhook TEXT,
    request TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (customer_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, lane, seq);
"""


def job(lane: Lane = Lane.normal, customer: str = "c1", **changes: object) -> Job:
    base = Job(id=new_job_id(), customer_id=customer, lane=lane,
               request={**REQUEST, "prompt": "x"}, created_at=time.time())  # fmt: skip
    return base.evolve(**changes)


async def reopen(path: Path) -> SqliteJobStore:
    again = SqliteJobStore(path)
    await again.open()
    return again


async def claim(store: SqliteJobStore, now: float = 100.0, holder: str = "p1") -> Job | None:
    return await store.claim(now, runnable=ROUTES, served=ROUTES, holder=holder, lease_seconds=30.0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    opened = await reopen(tmp_path / "jobs.db")
    yield opened
    await opened.close()


async def test_group_commit_shares_commits(store: SqliteJobStore) -> None:
    before = store.commits
    await asyncio.gather(*(store.submit(job(), **UNLIMITED) for _ in range(500)))
    assert sum((await store.depth()).values()) == 500
    assert store.commits - before <= 50  # many submissions per fsync, not one each


async def test_reopen_keeps_order_and_reports_running_jobs_as_orphaned(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = await reopen(path)
    items = [job(Lane.low), job(), job(Lane.high), job(), job()]
    for item in items:
        await first.submit(item, **UNLIMITED)
    running = await claim(first)  # the high one
    assert running is not None and running.id == items[2].id
    queued_order = [items[1], items[3], items[4], items[0]]
    await first.close()

    second = await reopen(path)
    try:
        # The store decides nothing: the job is still running, retries untouched, and it is
        # reported for the caller to requeue or fail.
        opened_again = await second.unsettled()
        assert [j.status for j in opened_again if j.id == running.id] == [JobStatus.running]
        assert [await second.position(j.id) for j in queued_order] == [0, 1, 2, 3]
        assert await second.queued_for("c1") == 4
    finally:
        await second.close()

    third = SqliteJobStore(path)
    opened = await third.open()
    try:
        assert [j.id for j in opened.orphaned] == [running.id] and opened.queued == 4
        assert opened.orphaned[0].status is JobStatus.running and opened.orphaned[0].retries == 0
        # Requeued, it is back at its own place: the head of the high lane.
        requeued = await third.requeue(running.id, count_retry=True)
        assert requeued is not None and requeued.retries == 1
        assert [await third.position(j.id) for j in [items[2], *queued_order]] == list(range(5))
    finally:
        await third.close()


async def test_an_orphan_the_caller_fails_leaves_no_place_behind(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = await reopen(path)
    older, newer = job(), job()
    await first.submit(older, **UNLIMITED)
    await first.submit(newer, **UNLIMITED)
    await claim(first)
    await first.close()
    second = SqliteJobStore(path)
    (orphan,) = (await second.open()).orphaned
    try:
        failed = await second.finish(orphan.id, JobStatus.error, 200.0, expect=RUNNING)
        assert failed is not None and failed.status is JobStatus.error
        assert await second.position(newer.id) == 0
        assert await second.requeue(orphan.id, count_retry=True) is None
    finally:
        await second.close()


async def test_a_clean_requeue_survives_a_restart_in_order(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = await reopen(path)
    older, newer = job(), job()
    await first.submit(older, **UNLIMITED)
    await first.submit(newer, **UNLIMITED)
    await claim(first)
    await first.requeue(older.id, extra={"requeued_by": "drain"}, count_retry=False)
    await first.close()
    second = SqliteJobStore(path)
    opened = await second.open()
    try:
        assert opened.orphaned == () and opened.queued == 2
        again = await second.get(older.id)
        assert again is not None and again.status is JobStatus.queued and again.retries == 0
        assert again.extra == {"requeued_by": "drain"}
        assert [await second.position(j.id) for j in (older, newer)] == [0, 1]
    finally:
        await second.close()


async def test_depth_limits_hold_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    limits = {"max_queued_for_customer": 2, "max_queued_total": 3}
    first = await reopen(path)
    await first.submit(job(), **limits)
    await first.submit(job(), **limits)
    await first.close()
    second = await reopen(path)
    try:
        with pytest.raises(QueueFull) as full:
            await second.submit(job(), **limits)
        assert full.value.kind == "customer"
        await second.submit(job(customer="c2"), **limits)
        with pytest.raises(QueueFull) as full:
            await second.submit(job(customer="c3"), **limits)
        assert full.value.kind == "total"
    finally:
        await second.close()


async def test_an_abandoned_submission_leaves_table_and_queue_in_step(
    store: SqliteJobStore,
) -> None:
    # A request cancelled while its submission is in the writer's queue: the job is either
    # stored and queued, or not stored at all, never stored but missing from the queue.
    items = [job() for _ in range(200)]
    tasks = [asyncio.create_task(store.submit(item, **UNLIMITED)) for item in items]
    await asyncio.sleep(0)  # every submission is queued for the writer
    for task in tasks[::2]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await store.submit(job(), **UNLIMITED)  # a later commit: every earlier one has landed
    stored = 0
    for item in items:
        in_table = await store.get(item.id) is not None
        assert in_table == (await store.position(item.id) is not None), item.id
        stored += in_table
    assert stored >= 100  # the half not cancelled
    assert await store.queued_for("c1") == stored + 1


async def test_a_schema_1_file_opens_and_migrates(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    old = [job(), job(Lane.high), job(), job()]
    statuses = ["queued", "queued", "running", "complete"]
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_1 + USAGE_SCHEMA)
        for seq, (item, status) in enumerate(zip(old, statuses, strict=True)):
            conn.execute(
                "INSERT INTO jobs (id, seq, customer_id, lane, status, created_at, request, "
                "started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (item.id, seq, item.customer_id, int(item.lane), status, item.created_at,
                 orjson.dumps(item.request).decode(), 5.0 if status != "queued" else None),
            )  # fmt: skip
        conn.execute("PRAGMA user_version = 1")
    conn.close()

    store = SqliteJobStore(path)
    opened = await store.open()
    try:
        assert [j.id for j in opened.orphaned] == [old[2].id] and opened.queued == 2
        assert [await store.position(j.id) for j in old[:2]] == [1, 0]
        assert await store.queued_for("c1") == 2
        migrated = await store.get(old[0].id)
        assert migrated is not None and not migrated.cancel_requested
        # Jobs that ended before schema 3 are not re-followed-up (their ends were long done).
        assert await store.unfollowed(float("inf"), 10) == []
        with pytest.raises(QueueFull):  # the old queued jobs count against the limits
            await store.submit(job(), max_queued_for_customer=2, max_queued_total=100)
        # Old and new jobs take part in every new operation: leases, cancels, order.
        newer = job()
        await store.submit(newer, **UNLIMITED)
        claimed = await claim(store, now=100.0, holder="p2")
        assert claimed is not None and claimed.id == old[1].id
        assert await store.heartbeat([claimed.id], "p2", 110.0, 30.0) == {claimed.id}
        await store.requeue(old[2].id, count_retry=True)
        assert [await store.position(j.id) for j in (old[0], old[2], newer)] == [0, 1, 2]
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    conn.close()
    assert version == SCHEMA_VERSION == 3


async def test_a_file_from_a_newer_build_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = SqliteJobStore(path)
    with pytest.raises(RuntimeError, match="schema"):
        await store.open()
    with sqlite3.connect(path) as conn:  # and nothing was written to it
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
    conn.close()
    assert (version, tables) == (SCHEMA_VERSION + 1, 0)


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
        store = SqliteJobStore(path)
        opened = await store.open()
        try:
            for job_id in acknowledged:
                assert await store.get(job_id) is not None, f"acknowledged job {job_id} was lost"
            # Every claim that returned before the kill is reported as an orphan, still running
            # and with its retries untouched: what becomes of it is the caller's decision.
            orphaned = {j.id: j for j in opened.orphaned}
            assert set(running) <= set(orphaned)
            assert all(j.status is JobStatus.running and j.retries == 0 for j in orphaned.values())
            # Every other acknowledged job is queued, and lanes keep their order.
            queued = [j for j in acknowledged if j not in orphaned]
            by_lane: dict[Lane, list[int]] = {}
            for job_id in queued:
                stored = await store.get(job_id)
                position = await store.position(job_id)
                assert stored is not None and position is not None
                by_lane.setdefault(stored.lane, []).append(position)
            for positions in by_lane.values():
                assert positions == sorted(positions)
        finally:
            await store.close()

    asyncio.run(check())

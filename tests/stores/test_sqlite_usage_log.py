"""The SQLite usage stream inside the job store's file: what only it promises. A job's record
commits with its final status (and a refused settle writes none), and an old data dir's
consumer cursors are its groups' positions. The stream's behaviour as every implementation has
it is in tests/contracts/test_usage_stream.py."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job, JobStatus, route_key
from render_gateway.core.lanes import Lane
from render_gateway.core.usage_records import UsageRecord, build_record
from render_gateway.stores.jobs import JobStore, open_job_store
from render_gateway.stores.usage_log import UsageStream

REQUEST = {"family": "sd", "model": "tiny", "prompt": "x"}
RUNNING = frozenset({JobStatus.running})


def usage() -> UsageRecord:
    now = time.time()
    return build_record(
        request_id="r", customer_id="c1", plan="default", tier="async", modality="image",
        family="sd", model="tiny", created_at=now - 2, started_at=now - 1, ended_at=now,
        outcome="success", parameters={"gpu_seconds": 1.5}, unit_price=0.01, currency="USD",
    )  # fmt: skip


def close_reader(stream: UsageStream) -> None:
    close = getattr(stream, "close_thread_connection", None)
    if close is not None:
        close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    opened = open_job_store(f"sqlite://{tmp_path / 'jobs.db'}")
    await opened.open()
    yield opened
    close_reader(opened.usage_log)
    await opened.close()


async def submitted(store: JobStore) -> Job:
    job = Job(new_job_id(), "c1", Lane.normal, dict(REQUEST), time.time())
    await store.submit(job, max_queued_for_customer=100, max_queued_total=100)
    return job


async def test_a_jobs_record_commits_with_its_final_status(store: JobStore) -> None:
    job = await submitted(store)
    key = frozenset({route_key(REQUEST)})
    claimed = await store.claim(
        time.time(), runnable=key, served=key, holder="test", lease_seconds=30
    )
    assert claimed is not None and claimed.id == job.id
    record = usage()
    finished = await store.finish(
        job.id, JobStatus.complete, time.time(), expect=RUNNING, usage=record
    )
    assert finished is not None and finished.status is JobStatus.complete
    logged = store.usage_log.read_group("clickhouse", 10)
    assert [entry.record["event_id"] for entry in logged] == [record.event_id]
    assert UsageRecord.from_dict(logged[0].record) == record


async def test_a_refused_settle_writes_no_record(store: JobStore) -> None:
    job = await submitted(store)  # queued, not running: a run's end is refused, nothing logged
    assert await store.finish(job.id, JobStatus.complete, time.time(), expect=RUNNING,
                              usage=usage()) is None  # fmt: skip
    assert store.usage_log.head() == 0


async def test_an_old_data_dirs_cursors_are_the_groups_positions(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = open_job_store(f"sqlite://{path}")
    await first.open()
    for _ in range(5):
        await first.usage_log.append_usage(usage())
    close_reader(first.usage_log)
    await first.close()
    # What the consumers of an older build left behind: a cursor row per consumer.
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO usage_cursors (consumer, seq) VALUES ('clickhouse', 3)")
    again = open_job_store(f"sqlite://{path}")
    await again.open()
    try:
        assert again.usage_log.acked("clickhouse") == 3
        assert [e.seq for e in again.usage_log.read_group("clickhouse", 10)] == [4, 5]
        assert again.usage_log.lag("clickhouse")[0] == 2
    finally:
        close_reader(again.usage_log)
        await again.close()

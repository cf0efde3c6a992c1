"""The usage log in the job store's SQLite file: records commit with the job, in order, and
consumers' cursors survive a reopen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job, JobStatus
from render_gateway.core.lanes import Lane
from render_gateway.core.months import month_of
from render_gateway.core.usage_records import UsageRecord, build_record
from render_gateway.stores.jobs import RecoveryPolicy
from render_gateway.stores.sqlite_jobs import SqliteJobStore


def usage(customer: str = "c1", gpu: float = 1.5, outcome: str = "success") -> UsageRecord:
    now = time.time()
    return build_record(
        request_id="r", customer_id=customer, plan="default", tier="sync", modality="image",
        family="sd", model="tiny", created_at=now - 2, started_at=now - 1, ended_at=now,
        outcome=outcome, parameters={"gpu_seconds": gpu}, unit_price=0.01, currency="USD",
        error_code="backend_error" if outcome == "error" else None,
    )  # fmt: skip


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    opened = SqliteJobStore(tmp_path / "jobs.db")
    await opened.open(RecoveryPolicy.requeue)
    yield opened
    opened.usage_log.close_thread_connection()
    await opened.close()


async def test_a_jobs_record_commits_with_its_final_status(store: SqliteJobStore) -> None:
    job = Job(new_job_id(), "c1", Lane.normal, {"prompt": "x"}, time.time())
    await store.submit(job)
    claimed = await store.claim_next(time.time())
    assert claimed is not None
    record = usage()
    await store.finish(job.id, JobStatus.complete, time.time(), usage=record)
    logged = store.usage_log.usage_after(0, 10)
    assert [entry.record["event_id"] for entry in logged] == [record.event_id]
    assert UsageRecord.from_dict(logged[0].record) == record


async def test_a_failed_settle_writes_no_record(store: SqliteJobStore) -> None:
    job = Job(new_job_id(), "c1", Lane.normal, {"prompt": "x"}, time.time())
    await store.submit(job)  # queued, not running: finish must refuse, and log nothing
    with pytest.raises(ValueError, match="not running"):
        await store.finish(job.id, JobStatus.complete, time.time(), usage=usage())
    assert store.usage_log.usage_head() == 0


async def test_sequence_numbers_follow_commit_order_and_reads_page(store: SqliteJobStore) -> None:
    records = [usage(gpu=float(i)) for i in range(25)]
    seqs = await asyncio.gather(*(store.usage_log.append_usage(r) for r in records))
    assert sorted(seqs) == list(range(1, 26))
    first = store.usage_log.usage_after(0, 10)
    rest = store.usage_log.usage_after(first[-1].seq, 100)
    assert [e.seq for e in first + rest] == list(range(1, 26))
    assert store.usage_log.usage_head() == 25
    assert store.usage_log.oldest_after(24) == pytest.approx(
        next(r.timestamp for r, s in zip(records, seqs, strict=True) if s == 25)
    )
    assert store.usage_log.oldest_after(25) is None


async def test_an_event_id_is_logged_once(store: SqliteJobStore) -> None:
    record = usage()
    await store.usage_log.append_usage(record)
    with pytest.raises(Exception, match="UNIQUE"):
        await store.usage_log.append_usage(record)


async def test_cursors_only_move_forward_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    await store.open(RecoveryPolicy.requeue)
    await asyncio.to_thread(store.usage_log.set_usage_cursor, "clickhouse", 7)
    await asyncio.to_thread(store.usage_log.set_usage_cursor, "clickhouse", 3)
    assert await asyncio.to_thread(store.usage_log.usage_cursor, "clickhouse") == 7
    assert await asyncio.to_thread(store.usage_log.usage_cursor, "audit") == 0
    await store.close()
    again = SqliteJobStore(path)
    await again.open(RecoveryPolicy.requeue)
    assert await asyncio.to_thread(again.usage_log.usage_cursor, "clickhouse") == 7
    await again.close()


async def test_month_usage_sums_billable_records_per_customer(store: SqliteJobStore) -> None:
    for record in (usage("a", 1.0), usage("a", 2.0), usage("b", 4.0), usage("a", 8.0, "error")):
        await store.usage_log.append_usage(record)
    totals = {m.customer_id: m for m in await store.usage_log.month_usage(month_of(time.time()))}
    assert totals["a"].gpu_seconds == 3.0 and totals["a"].cost_nanos == 30_000_000
    assert totals["b"].gpu_seconds == 4.0
    assert await store.usage_log.month_usage("1999-01") == []

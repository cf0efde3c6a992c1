"""The read side on its own client: a slow query does not hold up the writer's inserts, and
it reads what the writer wrote. Real chDB on a directory (two clients in one process share the
engine), a real SQLite usage stream."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from render_gateway.audit.reconcile_runs import recent_runs
from render_gateway.config import MeteringConfig
from render_gateway.core.usage_records import UsageRecord, build_record
from render_gateway.metering.queries import TimeRange
from render_gateway.metering.read_side import UsageQueries, UsageStoreError
from render_gateway.metering.store import open_usage_store
from render_gateway.metering.writer import UsageWriter
from render_gateway.stores.jobs import JobStore, open_job_store

# Ten blocks of one row, half a second each: a 5 s query (ClickHouse caps a block's sleep at
# 3 s, so the length comes from the block count).
SLOW_SQL = "SELECT sum(sleepEachRow(0.5)) FROM numbers(10) SETTINGS max_block_size = 1"
SLOW_SECONDS = 5.0


def usage(index: int) -> UsageRecord:
    now = time.time()
    return build_record(
        request_id=f"r{index}", customer_id="acme", plan="default", tier="sync",
        modality="image", family="sd", model="tiny", created_at=now - 1, started_at=now - 0.5,
        ended_at=now, outcome="success", parameters={"gpu_seconds": 0.5}, unit_price=0.002,
        currency="USD",
    )  # fmt: skip


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[JobStore]:
    store = open_job_store(f"sqlite://{tmp_path / 'jobs.db'}")
    await store.open()
    yield store
    close = getattr(store.usage_log, "close_thread_connection", None)  # the test thread's reader
    if close is not None:
        close()
    await store.close()


@pytest.fixture
async def writer(jobs: JobStore, tmp_path: Path) -> AsyncIterator[UsageWriter]:
    url = f"chdb://{tmp_path / 'ch'}"
    started = UsageWriter(jobs.usage_log, lambda: open_usage_store(url), 1000, 0.05)
    started.store = await asyncio.to_thread(open_usage_store, url)  # migrated, as serve does
    started.start()
    yield started
    await asyncio.to_thread(started.stop, 5.0)


@pytest.fixture
def queries(tmp_path: Path, writer: UsageWriter) -> Iterator[UsageQueries]:
    read_side = UsageQueries.for_config(MeteringConfig(url=f"chdb://{tmp_path / 'ch'}"), tmp_path)
    yield read_side
    read_side.close()


def last_hour() -> TimeRange:
    now = datetime.now(UTC)
    return TimeRange(now - timedelta(hours=1), now + timedelta(minutes=1))


async def append(jobs: JobStore, writer: UsageWriter, indexes: range) -> None:
    for index in indexes:
        await jobs.usage_log.append_usage(usage(index))
    writer.notify(len(indexes))
    writer.flush()


async def test_a_slow_read_does_not_hold_up_the_writers_inserts(
    jobs: JobStore, writer: UsageWriter, queries: UsageQueries
) -> None:
    read_store = await asyncio.to_thread(queries.store)
    assert read_store is not writer.store  # two clients, two locks
    began = threading.Event()
    slow_seconds: list[float] = []

    def slow_query() -> None:
        began.set()
        start = time.monotonic()
        read_store.rows(SLOW_SQL)
        slow_seconds.append(time.monotonic() - start)

    reader = threading.Thread(target=slow_query, name="slow-dashboard")
    reader.start()
    began.wait()
    await asyncio.sleep(0.3)  # the query is running on the read side's client now
    try:
        await append(jobs, writer, range(20))
        inserted_in = time.monotonic()
        assert await asyncio.to_thread(writer.wait_caught_up, SLOW_SECONDS - 1.5)
        inserted_in = time.monotonic() - inserted_in
        # Inserted and acked while the read was still running: it never waited for it.
        assert reader.is_alive(), f"the slow query ended first ({inserted_in:.2f} s)"
        assert writer.stats.written == 20 and jobs.usage_log.lag("clickhouse")[0] == 0
    finally:
        await asyncio.to_thread(reader.join)
    assert slow_seconds and slow_seconds[0] >= SLOW_SECONDS - 0.5  # it really was slow


async def test_the_read_side_reads_what_the_writer_wrote(
    jobs: JobStore, writer: UsageWriter, queries: UsageQueries
) -> None:
    await append(jobs, writer, range(6))
    assert await asyncio.to_thread(writer.wait_caught_up, 20.0)
    report = await queries.report("acme", last_hour(), ("model",), "USD")
    assert report["totals"]["requests"] == 6
    assert report["totals"]["gpu_seconds"] == pytest.approx(3.0)
    assert [row["model"] for row in report["rows"]] == [usage(0).model_name]
    board = await queries.dashboard(last_hour(), None, None)
    assert sum(minute["requests"] for minute in board["per_minute"]) == 6
    # The recorded reconciliation runs, as GET /reconciliations reads them on this client.
    assert await asyncio.to_thread(recent_runs, queries.store(), 10) == []


async def test_an_unreachable_store_is_an_error_to_the_caller_and_none_to_the_reconciler(
    tmp_path: Path,
) -> None:
    # Port 9 on the loopback: nothing listens, so every connection is refused at once.
    read_side = UsageQueries.for_config(MeteringConfig(url="http://127.0.0.1:9/db"), tmp_path)
    try:
        with pytest.raises(UsageStoreError):
            await read_side.report("acme", last_hour(), (), "USD")
        assert await asyncio.to_thread(read_side.store_or_none) is None
    finally:
        read_side.close()
    with pytest.raises(UsageStoreError, match="closed"):
        read_side.store()

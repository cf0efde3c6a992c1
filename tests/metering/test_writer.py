"""The hot-path writer on a real SQLite usage stream and a real chDB store: batches acked as
they land, an outage that spools and replays, and a restart that would otherwise insert a batch
twice."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from render_gateway.core.usage_records import UsageRecord, build_record
from render_gateway.metering.store import ClickHouseUsageStore, open_usage_store
from render_gateway.metering.writer import GROUP, UsageWriter
from render_gateway.stores.jobs import JobStore, open_job_store


def usage(index: int) -> UsageRecord:
    now = time.time()
    return build_record(
        request_id=f"r{index}", customer_id=f"c{index % 3}", plan="default", tier="sync",
        modality="image", family="sd", model="tiny", created_at=now - 1, started_at=now - 0.5,
        ended_at=now, outcome="success", parameters={"gpu_seconds": 0.25 + index / 1000},
        unit_price=0.001, currency="USD",
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


def opener(path: Path) -> Callable[[], ClickHouseUsageStore]:
    return lambda: open_usage_store(f"chdb://{path}")


def counts(store: ClickHouseUsageStore) -> tuple[int, int, float]:
    """(raw events, requests in the per-minute rollup, raw GPU-seconds)."""
    ((raw, gpu),) = store.rows("SELECT count(), sum(gpu_seconds) FROM inference_events")
    ((rolled,),) = store.rows("SELECT sum(requests) FROM metrics_1m")
    return int(raw), int(rolled), float(gpu)


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def append(jobs: JobStore, writer: UsageWriter, indexes: range) -> float:
    records = [usage(i) for i in indexes]
    await asyncio.gather(*(jobs.usage_log.append_usage(r) for r in records))
    writer.notify(len(records))
    return sum(r.gpu_seconds for r in records)


async def test_records_flow_in_batches_and_are_acked_as_they_land(
    jobs: JobStore, tmp_path: Path
) -> None:
    writer = UsageWriter(
        jobs.usage_log, opener(tmp_path / "ch"), batch_rows=20, flush_interval=0.05
    )
    writer.start()
    try:
        gpu = await append(jobs, writer, range(55))
        assert await asyncio.to_thread(writer.wait_caught_up, 20.0)
        assert writer.store is not None
        raw, rolled, stored_gpu = counts(writer.store)
        assert (raw, rolled) == (55, 55)
        assert stored_gpu == pytest.approx(gpu, abs=1e-9)
        assert writer.stats.batches >= 3  # 55 records in batches of at most 20
        assert writer.stats.dropped == 0 and writer.stats.backlog == 0
        assert jobs.usage_log.acked(GROUP) == 55 == writer.stats.acked
        assert jobs.usage_log.lag(GROUP) == (0, None)
    finally:
        await asyncio.to_thread(writer.stop, 5.0)


async def test_an_outage_keeps_records_on_disk_and_replays_them_once(
    jobs: JobStore, tmp_path: Path
) -> None:
    writer = UsageWriter(
        jobs.usage_log, opener(tmp_path / "ch"), batch_rows=7, flush_interval=0.05,
        max_backoff=0.2,
    )  # fmt: skip
    writer.start()
    try:
        await until(lambda: writer.store is not None)
        assert writer.store is not None
        store = writer.store
        gpu = await append(jobs, writer, range(10))
        assert await asyncio.to_thread(writer.wait_caught_up, 20.0)
        store.rows("DETACH TABLE inference_events")  # the store fails every insert now
        gpu += await append(jobs, writer, range(10, 40))
        await until(lambda: writer.stats.store_errors >= 2)
        assert writer.stats.backlog == 30  # spooled: in the stream, unacked, nowhere lost
        assert jobs.usage_log.acked(GROUP) == 10
        await until(lambda: writer.stats.lag_seconds > 0.1)
        gpu += await append(jobs, writer, range(40, 45))  # more arrive during the outage
        store.rows("ATTACH TABLE inference_events")
        assert await asyncio.to_thread(writer.wait_caught_up, 20.0)
        raw, rolled, stored_gpu = counts(store)
        assert (raw, rolled) == (45, 45)  # zero loss, zero duplicates, rollups included
        assert stored_gpu == pytest.approx(gpu, abs=1e-9)
        assert writer.stats.backlog == 0 and writer.stats.lag_seconds == 0.0
        assert writer.stats.dropped == 0
    finally:
        await asyncio.to_thread(writer.stop, 5.0)


async def test_a_restart_after_an_insert_whose_ack_was_lost_inserts_nothing_twice(
    jobs: JobStore, tmp_path: Path
) -> None:
    first = UsageWriter(jobs.usage_log, opener(tmp_path / "ch"), batch_rows=50, flush_interval=0.05)
    first.start()
    await append(jobs, first, range(40))
    assert await asyncio.to_thread(first.wait_caught_up, 20.0)
    await asyncio.to_thread(first.stop, 0)
    # A kill -9 between the insert and the ack's commit leaves exactly this state behind (an
    # ack never moves back, so the SQLite file is rewritten behind the stream's back).
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        conn.execute("UPDATE usage_cursors SET seq = 15 WHERE consumer = ?", (GROUP,))
    second = UsageWriter(
        jobs.usage_log, opener(tmp_path / "ch"), batch_rows=50, flush_interval=0.05
    )
    second.start()
    try:
        await append(jobs, second, range(40, 45))
        assert await asyncio.to_thread(second.wait_caught_up, 20.0)
        assert second.store is not None
        raw, rolled, _ = counts(second.store)
        assert (raw, rolled) == (45, 45)
        assert second.stats.already_present == 25  # seq 16..40 were in the store already
        assert second.stats.written == 5
    finally:
        await asyncio.to_thread(second.stop, 5.0)


async def test_the_same_batch_inserted_twice_counts_once(tmp_path: Path) -> None:
    """The dedup token: a retried insert whose first attempt did land is dropped by the store."""
    from render_gateway.metering.columns import records_to_table
    from render_gateway.metering.writer import _token

    store = open_usage_store(f"chdb://{tmp_path / 'ch'}")
    try:
        table = records_to_table([usage(i).to_dict() for i in range(12)])
        store.insert(table, dedup_token=_token(table))
        store.insert(table, dedup_token=_token(table))
        assert counts(store)[:2] == (12, 12)
    finally:
        store.close()


async def test_a_malformed_record_is_skipped_and_the_rest_of_its_batch_lands_once(
    jobs: JobStore, tmp_path: Path
) -> None:
    """The store parses the batch's JSON and refuses it whole (a record lacks its timestamp);
    the writer converts that batch itself, skips the one record, and goes on with JSON."""
    good = [usage(i) for i in range(6)]
    for record in good[:3]:
        await jobs.usage_log.append_usage(record)
    broken = usage(99).to_dict()
    del broken["timestamp"]
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        conn.execute(
            "INSERT INTO usage_log (event_id, customer_id, month, timestamp, billable,"
            " gpu_seconds, cost_nanos, record, claim) VALUES (?, '', '2026-12', ?, 1, 0, 0, ?,"
            " NULL)",
            (broken["event_id"], time.time(), orjson.dumps(broken)),
        )
    for record in good[3:]:
        await jobs.usage_log.append_usage(record)
    writer = UsageWriter(jobs.usage_log, opener(tmp_path / "ch"), batch_rows=4, flush_interval=0.05)
    writer.start()
    try:
        assert await asyncio.to_thread(writer.wait_caught_up, 20.0)
        assert writer.store is not None
        raw, rolled, stored_gpu = counts(writer.store)
        assert (raw, rolled) == (6, 6)
        assert stored_gpu == pytest.approx(sum(r.gpu_seconds for r in good), abs=1e-9)
        assert writer.stats.dropped == 1 and writer.stats.store_errors == 0
        assert jobs.usage_log.acked(GROUP) == 7
        # After the start (checked against stored ids) and the refused batch, JSON again.
        await append(jobs, writer, range(10, 15))
        assert await asyncio.to_thread(writer.wait_caught_up, 20.0)
        assert counts(writer.store)[:2] == (11, 11)
        assert writer.stats.already_present == 0
    finally:
        await asyncio.to_thread(writer.stop, 5.0)

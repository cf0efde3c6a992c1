"""One contract for the usage stream, run against every implementation (the SQLite stream inside
the job store, memory, and the Redis Stream of the Redis job store on a real redis-server, a
fresh namespace per test). Only the Protocol's operations are used.

The stream is read as consumer groups with explicit acks: a group gets the entries after its
last ack, again and again until it acks them, and an ack never moves back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
import redis

from render_gateway.core.months import month_of
from render_gateway.core.usage_records import UsageRecord, build_record
from render_gateway.stores.jobs import open_job_store
from render_gateway.stores.memory_usage_log import MemoryUsageStream
from render_gateway.stores.redis_client import key as redis_key
from render_gateway.stores.redis_jobs import open_redis_job_store
from render_gateway.stores.redis_usage_log import EVENT_IDS_KEPT_S, RedisUsageStream
from render_gateway.stores.usage_log import (
    BUDGET_GROUP,
    COLD_PATH_GROUP,
    HOT_PATH_GROUP,
    USAGE_GROUPS,
    UsageAlreadyLogged,
    UsageStream,
)

OpenStream = Callable[[], AbstractAsyncContextManager[UsageStream]]


def usage(
    customer: str = "c1", gpu: float = 1.5, outcome: Literal["success", "error"] = "success"
) -> UsageRecord:
    now = time.time()
    return build_record(
        request_id="r", customer_id=customer, plan="default", tier="sync", modality="image",
        family="sd", model="tiny", created_at=now - 2, started_at=now - 1, ended_at=now,
        outcome=outcome, parameters={"gpu_seconds": gpu}, unit_price=0.01, currency="USD",
        error_code="backend_error" if outcome == "error" else None,
    )  # fmt: skip


def _close_reader(stream: UsageStream) -> None:
    # The SQLite stream keeps a read connection per consumer thread (here: the test's own);
    # closing it is cleanup, not behaviour, so it is looked up rather than required.
    close = getattr(stream, "close_thread_connection", None)
    if close is not None:
        close()


def _sqlite(path: Path) -> OpenStream:
    @asynccontextmanager
    async def opened() -> AsyncIterator[UsageStream]:
        jobs = open_job_store(f"sqlite://{path}")
        await jobs.open()
        try:
            yield jobs.usage_log
        finally:
            _close_reader(jobs.usage_log)
            await jobs.close()

    return opened


def _memory() -> OpenStream:
    stream = MemoryUsageStream()  # one per test; "reopening" it finds the same object

    @asynccontextmanager
    async def opened() -> AsyncIterator[UsageStream]:
        yield stream

    return opened


def _redis(url: str) -> OpenStream:
    fresh = uuid.uuid4().hex  # this test's stream only: it starts empty; a reopen finds it

    @asynccontextmanager
    async def opened() -> AsyncIterator[UsageStream]:
        jobs = open_redis_job_store(
            url, namespace=redis_key("jobs", fresh), usage_namespace=redis_key("usage", fresh)
        )
        await jobs.open()
        try:
            yield jobs.usage_log
        finally:
            await jobs.close()

    return opened


@pytest.fixture(params=["sqlite", "memory", "redis"])
def open_stream(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStream:
    if request.param == "sqlite":
        return _sqlite(tmp_path / "jobs.db")
    if request.param == "redis":
        return _redis(request.getfixturevalue("redis_server").url)
    return _memory()


# The implementations whose entries and acks outlive the process.
@pytest.fixture(params=["sqlite", "redis"])
def open_durable_stream(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStream:
    if request.param == "redis":
        return _redis(request.getfixturevalue("redis_server").url)
    return _sqlite(tmp_path / "jobs.db")


@pytest.fixture
async def stream(open_stream: OpenStream) -> AsyncIterator[UsageStream]:
    async with open_stream() as opened:
        yield opened


async def append_all(stream: UsageStream, records: list[UsageRecord]) -> list[int]:
    return list(await asyncio.gather(*(stream.append_usage(r) for r in records)))


# The usage stream contract.


async def test_an_empty_stream_has_nothing_to_read(stream: UsageStream) -> None:
    assert stream.head() == 0
    assert stream.acked("clickhouse") == 0
    assert stream.read_group("clickhouse", 10) == []
    assert stream.read_group_json("clickhouse", 10) == ([], [])
    assert stream.lag("clickhouse") == (0, None)


async def test_sequence_numbers_follow_append_order(stream: UsageStream) -> None:
    records = [usage(gpu=float(i)) for i in range(25)]
    seqs = await append_all(stream, records)
    assert sorted(seqs) == list(range(1, 26))
    assert stream.head() == 25
    by_seq = dict(zip(seqs, records, strict=True))
    read = stream.read_group("g", 100)
    assert [entry.seq for entry in read] == list(range(1, 26))
    assert [UsageRecord.from_dict(entry.record) for entry in read] == [
        by_seq[s] for s in sorted(seqs)
    ]


async def test_a_record_reads_back_whole_with_its_claim(stream: UsageStream) -> None:
    record = usage()
    await stream.append_usage(record)
    (entry,) = stream.read_group("audit", 10)
    assert entry.record == orjson.loads(orjson.dumps(record.to_dict()))
    assert UsageRecord.from_dict(entry.record) == record


async def test_the_bulk_form_is_the_same_entries_without_the_claim(stream: UsageStream) -> None:
    records = [usage(gpu=float(i)) for i in range(5)]
    for record in records:
        await stream.append_usage(record)
    seqs, blobs = stream.read_group_json("clickhouse", 3)
    assert seqs == [1, 2, 3]
    full = stream.read_group("clickhouse", 3)
    assert [orjson.loads(b) for b in blobs] == [
        {k: v for k, v in e.record.items() if k != "usage_claim"} for e in full
    ]


async def test_the_raw_form_is_the_same_entries_with_the_claim_apart(stream: UsageStream) -> None:
    """What the cold path's batcher reads: the stored JSON and the claim's text, unparsed."""
    records = [
        dataclasses.replace(usage(gpu=float(i)), usage_claim=f'{{"n":{i}}}') for i in range(4)
    ]
    records[2] = dataclasses.replace(records[2], usage_claim=None)
    for record in records:
        await stream.append_usage(record)
    seqs, blobs, claims = stream.read_group_raw("audit", 3)
    assert seqs == [1, 2, 3]
    assert claims == ['{"n":0}', '{"n":1}', None]
    full = stream.read_group("audit", 3)
    assert [{**orjson.loads(b), "usage_claim": c} for b, c in zip(blobs, claims, strict=True)] == [
        e.record for e in full
    ]


async def test_a_group_reads_the_same_entries_until_it_acks_them(stream: UsageStream) -> None:
    await append_all(stream, [usage(gpu=float(i)) for i in range(10)])
    first = stream.read_group("g", 4)
    assert [e.seq for e in first] == [1, 2, 3, 4]
    # A consumer that died before its ack gets the same entries back.
    assert [e.seq for e in stream.read_group("g", 4)] == [1, 2, 3, 4]
    stream.ack("g", first[-1].seq)
    assert stream.acked("g") == 4
    assert [e.seq for e in stream.read_group("g", 4)] == [5, 6, 7, 8]
    assert stream.read_group_json("g", 100)[0] == [5, 6, 7, 8, 9, 10]


async def test_paging_by_acks_reads_everything_once(stream: UsageStream) -> None:
    await append_all(stream, [usage(gpu=float(i)) for i in range(23)])
    seen: list[int] = []
    while batch := stream.read_group("g", 5):
        seen += [e.seq for e in batch]
        stream.ack("g", batch[-1].seq)
    assert seen == list(range(1, 24))
    assert stream.lag("g") == (0, None)


async def test_groups_are_independent(stream: UsageStream) -> None:
    await append_all(stream, [usage(gpu=float(i)) for i in range(6)])
    stream.ack("clickhouse", 6)
    stream.ack("audit", 2)
    assert stream.read_group("clickhouse", 10) == []
    assert [e.seq for e in stream.read_group("audit", 10)] == [3, 4, 5, 6]
    assert [e.seq for e in stream.read_group("new", 10)] == [1, 2, 3, 4, 5, 6]
    assert stream.lag("clickhouse")[0] == 0
    assert stream.lag("audit")[0] == 4
    assert stream.lag("new")[0] == 6


async def test_an_ack_never_moves_back(stream: UsageStream) -> None:
    await append_all(stream, [usage(gpu=float(i)) for i in range(8)])
    stream.ack("g", 7)
    stream.ack("g", 3)
    assert stream.acked("g") == 7
    assert [e.seq for e in stream.read_group("g", 10)] == [8]


async def test_lag_counts_the_unacked_and_dates_the_oldest(stream: UsageStream) -> None:
    records = [usage(gpu=float(i)) for i in range(5)]
    for record in records:  # one at a time: sequence n is records[n - 1]
        await stream.append_usage(record)
    waiting, oldest = stream.lag("g")
    assert waiting == 5
    assert oldest == pytest.approx(records[0].timestamp)
    stream.ack("g", 3)
    waiting, oldest = stream.lag("g")
    assert waiting == 2
    assert oldest == pytest.approx(records[3].timestamp)
    stream.ack("g", 5)
    assert stream.lag("g") == (0, None)


async def test_appends_after_an_ack_are_read_next(stream: UsageStream) -> None:
    await append_all(stream, [usage(gpu=float(i)) for i in range(3)])
    stream.ack("g", 3)
    assert stream.read_group("g", 10) == []
    await stream.append_usage(usage(gpu=9.0))
    (entry,) = stream.read_group("g", 10)
    assert entry.seq == 4 and entry.record["gpu_seconds"] == 9.0


async def test_an_event_id_is_appended_once(stream: UsageStream) -> None:
    record = usage()
    assert await stream.append_usage(record) == 1
    with pytest.raises(UsageAlreadyLogged):
        await stream.append_usage(record)
    assert stream.head() == 1


async def test_month_usage_sums_billable_records_per_customer(stream: UsageStream) -> None:
    for record in (usage("a", 1.0), usage("a", 2.0), usage("b", 4.0), usage("a", 8.0, "error")):
        await stream.append_usage(record)
    totals = {m.customer_id: m for m in await stream.month_usage(month_of(time.time()))}
    assert set(totals) == {"a", "b"}
    assert totals["a"].gpu_seconds == 3.0 and totals["a"].cost_nanos == 30_000_000
    assert totals["b"].gpu_seconds == 4.0 and totals["b"].cost_nanos == 40_000_000
    assert await stream.month_usage("1999-01") == []


async def test_entries_and_acks_survive_a_reopen(open_durable_stream: OpenStream) -> None:
    async with open_durable_stream() as stream:
        await append_all(stream, [usage(gpu=float(i)) for i in range(6)])
        stream.ack("clickhouse", 4)
    async with open_durable_stream() as again:
        assert again.head() == 6
        assert again.acked("clickhouse") == 4
        assert again.acked("audit") == 0
        assert [e.seq for e in again.read_group("clickhouse", 10)] == [5, 6]
        assert await again.append_usage(usage()) == 7


# Trimming: what every known group acked may go (the SQLite stream keeps it all, which the
# Protocol allows); nothing else changes for the known groups.


@pytest.fixture
def trims(request: pytest.FixtureRequest) -> bool:
    """Whether this implementation drops what it may (the SQLite stream keeps every row)."""
    return bool(request.node.callspec.params.get("open_stream") != "sqlite")


def ack_groups(stream: UsageStream, positions: dict[str, int]) -> None:
    for group, position in positions.items():
        stream.ack(group, position)


async def test_a_trim_leaves_every_group_reading_what_it_had_not_acked(
    stream: UsageStream, trims: bool
) -> None:
    records = [usage(gpu=float(i)) for i in range(10)]
    for record in records:  # one at a time: sequence n is records[n - 1]
        await stream.append_usage(record)
    ack_groups(stream, {HOT_PATH_GROUP: 8, COLD_PATH_GROUP: 5, BUDGET_GROUP: 6})
    assert stream.trim_acked() == (5 if trims else 0)  # what all three acked
    assert stream.head() == 10
    assert [e.seq for e in stream.read_group(HOT_PATH_GROUP, 10)] == [9, 10]
    assert [e.seq for e in stream.read_group(COLD_PATH_GROUP, 10)] == [6, 7, 8, 9, 10]
    assert stream.read_group_json(BUDGET_GROUP, 10)[0] == [7, 8, 9, 10]
    assert [UsageRecord.from_dict(e.record) for e in stream.read_group(COLD_PATH_GROUP, 10)] == (
        records[5:]
    )
    waiting, oldest = stream.lag(COLD_PATH_GROUP)
    assert waiting == 5 and oldest == pytest.approx(records[5].timestamp)
    assert stream.lag(HOT_PATH_GROUP)[0] == 2
    assert stream.acked(COLD_PATH_GROUP) == 5


async def test_a_group_that_never_acked_holds_everything(stream: UsageStream, trims: bool) -> None:
    await append_all(stream, [usage(gpu=float(i)) for i in range(4)])
    ack_groups(stream, {HOT_PATH_GROUP: 4, COLD_PATH_GROUP: 4})  # budgets never acked
    assert stream.trim_acked() == 0
    assert [e.seq for e in stream.read_group(BUDGET_GROUP, 10)] == [1, 2, 3, 4]
    assert stream.lag(BUDGET_GROUP)[0] == 4
    # Only the groups named count: named alone, the two that acked allow the trim.
    assert stream.trim_acked([HOT_PATH_GROUP, COLD_PATH_GROUP]) == (4 if trims else 0)
    assert stream.head() == 4


async def test_sequence_numbers_go_on_after_everything_is_trimmed(
    stream: UsageStream, trims: bool
) -> None:
    await append_all(stream, [usage(gpu=float(i)) for i in range(6)])
    ack_groups(stream, dict.fromkeys(USAGE_GROUPS, 6))
    assert stream.trim_acked() == (6 if trims else 0)
    assert stream.head() == 6
    assert stream.read_group(HOT_PATH_GROUP, 10) == []
    assert stream.lag(HOT_PATH_GROUP) == (0, None)
    later = usage(gpu=7.0)
    assert await stream.append_usage(later) == 7  # never a number handed out before
    assert stream.head() == 7
    (entry,) = stream.read_group(COLD_PATH_GROUP, 10)
    assert entry.seq == 7 and UsageRecord.from_dict(entry.record) == later
    waiting, oldest = stream.lag(BUDGET_GROUP)
    assert waiting == 1 and oldest == pytest.approx(later.timestamp)
    assert stream.trim_acked() == 0  # nobody acked 7
    assert stream.acked(HOT_PATH_GROUP) == 6


async def test_a_trimmed_record_is_still_refused_a_second_time(stream: UsageStream) -> None:
    record = usage()
    await stream.append_usage(record)
    ack_groups(stream, dict.fromkeys(USAGE_GROUPS, 1))
    stream.trim_acked()
    with pytest.raises(UsageAlreadyLogged):
        await stream.append_usage(record)
    assert stream.head() == 1


async def test_a_trim_keeps_the_month_usage(stream: UsageStream) -> None:
    for record in (usage("a", 1.0), usage("a", 2.0), usage("b", 4.0)):
        await stream.append_usage(record)
    ack_groups(stream, dict.fromkeys(USAGE_GROUPS, 3))
    stream.trim_acked()
    totals = {m.customer_id: m for m in await stream.month_usage(month_of(time.time()))}
    assert totals["a"].gpu_seconds == 3.0 and totals["a"].cost_nanos == 30_000_000
    assert totals["b"].gpu_seconds == 4.0 and totals["b"].cost_nanos == 40_000_000


async def test_a_trim_survives_a_reopen(open_durable_stream: OpenStream) -> None:
    async with open_durable_stream() as stream:
        await append_all(stream, [usage(gpu=float(i)) for i in range(5)])
        ack_groups(stream, {HOT_PATH_GROUP: 5, COLD_PATH_GROUP: 3, BUDGET_GROUP: 4})
        stream.trim_acked()
    async with open_durable_stream() as again:
        assert again.head() == 5
        assert [e.seq for e in again.read_group(COLD_PATH_GROUP, 10)] == [4, 5]
        assert await again.append_usage(usage()) == 6


# The Redis stream's trim, in Redis itself: the stream and the dedupe shrink.


@pytest.fixture
async def redis_stream(redis_server: Any) -> AsyncIterator[RedisUsageStream]:
    fresh = uuid.uuid4().hex
    jobs = open_redis_job_store(
        redis_server.url,
        namespace=redis_key("jobs", fresh),
        usage_namespace=redis_key("usage", fresh),
    )
    await jobs.open()
    try:
        yield jobs.usage_log
    finally:
        await jobs.close()


async def test_redis_trim_shrinks_the_stream_and_every_group_reads_its_backlog(
    redis_stream: RedisUsageStream, redis_server: Any
) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    ns = redis_stream.namespace
    try:
        for start in range(0, 200, 20):  # within the client's connection pool
            await append_all(redis_stream, [usage(gpu=float(i)) for i in range(start, start + 20)])
        positions = {HOT_PATH_GROUP: 190, COLD_PATH_GROUP: 120, BUDGET_GROUP: 150}
        unread = {
            group: [e.seq for e in redis_stream.read_group(group, 500) if e.seq > position]
            for group, position in positions.items()
        }
        ack_groups(redis_stream, positions)
        before = int(raw.memory_usage(ns) or 0)
        assert raw.xlen(ns) == 200
        assert redis_stream.trim_acked() == 120
        assert raw.xlen(ns) == 80
        oldest = raw.xrange(ns, count=1)
        assert oldest is not None and oldest[0][0] == b"121-0"
        assert 0 < int(raw.memory_usage(ns) or 0) < before
        for group, position in positions.items():
            read = [e.seq for e in redis_stream.read_group(group, 500)]
            assert read == unread[group] == list(range(position + 1, 201))
            assert redis_stream.lag(group)[0] == 200 - position
        assert redis_stream.trim_acked() == 0  # nothing more is acked by all
        assert raw.get(f"{ns}:seq") == b"200"
        assert await redis_stream.append_usage(usage()) == 201
    finally:
        raw.close()


async def test_redis_trim_forgets_event_ids_only_after_the_window(
    redis_stream: RedisUsageStream, redis_server: Any
) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    ns = redis_stream.namespace
    try:
        record = usage()
        await redis_stream.append_usage(record)
        ack_groups(redis_stream, dict.fromkeys(USAGE_GROUPS, 1))
        # A day later the id is still refused (kept 7 days)...
        redis_stream.trim_acked(now=record.timestamp + 86400)
        assert raw.zcard(f"{ns}:event_ids") == 1
        with pytest.raises(UsageAlreadyLogged):
            await redis_stream.append_usage(record)
        # ...and past the window it is forgotten, so the set does not grow forever.
        redis_stream.trim_acked(now=record.timestamp + EVENT_IDS_KEPT_S + 1)
        assert raw.zcard(f"{ns}:event_ids") == 0
        assert await redis_stream.append_usage(record) == 2  # what forgetting means
    finally:
        raw.close()


async def test_redis_trim_moves_an_older_gateways_event_set_into_the_window(
    redis_stream: RedisUsageStream, redis_server: Any
) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    ns = redis_stream.namespace
    try:
        # A stream an older gateway wrote kept every event id in a plain set.
        old = usage()
        raw.sadd(f"{ns}:events", old.event_id, *[f"old-{i}" for i in range(20)])
        with pytest.raises(UsageAlreadyLogged):
            await redis_stream.append_usage(old)
        now = time.time()
        redis_stream.trim_acked(now=now)
        assert not raw.exists(f"{ns}:events")
        assert raw.zcard(f"{ns}:event_ids") == 21
        assert raw.zscore(f"{ns}:event_ids", old.event_id) == pytest.approx(now)
        with pytest.raises(UsageAlreadyLogged):
            await redis_stream.append_usage(old)
        assert redis_stream.head() == 0
    finally:
        raw.close()

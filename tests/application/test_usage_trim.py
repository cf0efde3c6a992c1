"""The metering holder's periodic trim of the usage stream
(application/metering_role.py ``trim_usage_stream``), on a real redis-server: the entries every
consumer group acked leave the Redis Stream round by round, and what a group has not acked
stays."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import redis

from render_gateway.application.metering_role import trim_usage_stream
from render_gateway.core.usage_records import UsageRecord, build_record
from render_gateway.stores.redis_client import key as redis_key
from render_gateway.stores.redis_jobs import open_redis_job_store
from render_gateway.stores.usage_log import (
    BUDGET_GROUP,
    COLD_PATH_GROUP,
    HOT_PATH_GROUP,
    USAGE_GROUPS,
)

from support.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]


def usage(gpu: float) -> UsageRecord:
    now = time.time()
    return build_record(
        request_id="r", customer_id="c1", plan="default", tier="sync", modality="image",
        family="sd", model="tiny", created_at=now - 2, started_at=now - 1, ended_at=now,
        outcome="success", parameters={"gpu_seconds": gpu}, unit_price=0.01, currency="USD",
        error_code=None,
    )  # fmt: skip


async def wait_for(check: object, timeout_s: float = 5.0) -> bool:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return bool(check())


async def test_the_periodic_trim_follows_the_slowest_group(redis_server: RedisServer) -> None:
    fresh = uuid.uuid4().hex
    jobs = open_redis_job_store(
        redis_server.url,
        namespace=redis_key("jobs", fresh),
        usage_namespace=redis_key("usage", fresh),
    )
    await jobs.open()
    stream = jobs.usage_log
    raw = redis.Redis.from_url(redis_server.url)
    trimming = asyncio.create_task(trim_usage_stream(stream, interval_s=0.05))
    try:
        for i in range(10):
            await stream.append_usage(usage(float(i)))
        stream.ack(HOT_PATH_GROUP, 10)
        stream.ack(BUDGET_GROUP, 10)
        await asyncio.sleep(0.2)  # rounds pass: the audit group never acked, nothing goes
        assert raw.xlen(stream.namespace) == 10
        stream.ack(COLD_PATH_GROUP, 7)
        assert await wait_for(lambda: raw.xlen(stream.namespace) == 3)
        assert [e.seq for e in stream.read_group(COLD_PATH_GROUP, 10)] == [8, 9, 10]
        for group in USAGE_GROUPS:
            stream.ack(group, 10)
        assert await wait_for(lambda: raw.xlen(stream.namespace) == 0)
        assert stream.head() == 10
        assert not trimming.done()  # it keeps going while the role is held
    finally:
        trimming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trimming
        raw.close()
        await jobs.close()

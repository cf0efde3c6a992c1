"""What the Redis job store adds over the Protocol's contract: a submit whose reply was lost
(its connection dropped after Redis ran it) and that the client sends again is stored and
counted once, not twice (redis-py retries a command once on a fresh connection); and with
``ReplicaWait`` an admission is acknowledged only once a real Redis replica has it."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as redis

from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job
from render_gateway.core.lanes import Lane
from render_gateway.stores.redis_client import key
from render_gateway.stores.redis_jobs import ReplicaWait, open_redis_job_store
from render_gateway.stores.unavailable import StoreUnavailable

from support.processes import stop_process
from support.redis_server import RedisServer, redis_server, start_redis

__all__ = ["redis_server"]


async def test_a_repeated_submit_of_one_job_is_stored_and_counted_once(
    redis_server: RedisServer,
) -> None:
    fresh = uuid.uuid4().hex
    store = open_redis_job_store(
        redis_server.url, namespace=key("jobs", fresh), usage_namespace=key("usage", fresh)
    )
    await store.open()
    try:
        job = Job(new_job_id(), "c1", Lane.normal, {"family": "sd", "model": "a"}, time.time())
        first, created = await store.submit(job, max_queued_for_customer=5, max_queued_total=5)
        again, created_again = await store.submit(
            job, max_queued_for_customer=5, max_queued_total=5
        )
        # The retry answers as the submit it repeats (the caller keeps its budget hold).
        assert created and created_again and again == first
        assert await store.queued_for("c1") == 1
        assert sum((await store.depth()).values()) == 1
        assert await store.position(job.id) == 0
        assert [j.id for j in await store.unsettled()] == [job.id]
    finally:
        await store.close()


async def test_with_replica_wait_an_admission_is_acknowledged_only_once_a_replica_has_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    replica = start_redis(tmp_path / "replica", replica_of=redis_server.port)
    fresh = uuid.uuid4().hex
    store = open_redis_job_store(
        redis_server.url, namespace=key("jobs", fresh), usage_namespace=key("usage", fresh),
        wait=ReplicaWait(1, 2000),
    )  # fmt: skip
    await store.open()
    try:
        first = Job(new_job_id(), "c1", Lane.normal, {"family": "sd", "model": "a"}, time.time())
        await wait_for_link(redis_server)
        stored, created = await store.submit(first, max_queued_for_customer=5, max_queued_total=5)
        assert created and stored.id == first.id
        replica.process.kill()  # the replica is gone: WAIT times out with 0 of 1
        replica.process.wait()
        second = first.evolve(id=new_job_id())
        began = time.monotonic()
        with pytest.raises(StoreUnavailable, match="0 of 1"):
            await store.submit(second, max_queued_for_customer=5, max_queued_total=5)
        assert time.monotonic() - began < 10
        # The write is on the primary (the job exists and will run): it was not acknowledged.
        assert await store.get(second.id) is not None
    finally:
        stop_process(replica.process)
        await store.close()


async def wait_for_link(primary: RedisServer) -> None:
    client = redis.Redis(host="127.0.0.1", port=primary.port)
    try:
        for _ in range(200):
            info = await client.info("replication")
            if "slave0" in info and info["slave0"].get("state") == "online":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the replica never came online: {info}")
    finally:
        await client.aclose()

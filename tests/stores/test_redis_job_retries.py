"""What the Redis job store adds over the Protocol's contract: a submit whose reply was lost
(its connection dropped after Redis ran it) and that the client sends again is stored and
counted once, not twice (redis-py retries a command once on a fresh connection)."""

from __future__ import annotations

import time
import uuid

from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job
from render_gateway.core.lanes import Lane
from render_gateway.stores.redis_client import key
from render_gateway.stores.redis_jobs import open_redis_job_store

from support.redis_server import RedisServer, redis_server

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

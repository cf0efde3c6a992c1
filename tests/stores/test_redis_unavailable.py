"""The Redis clients the stores open turn "cannot reach Redis" into StoreUnavailable (the one
error the HTTP layer answers with 503), quickly, for single commands, pipelines and scripts;
Redis's other errors stay what they are; the readiness probe is False while Redis is down and
True again once it is back on the same port, with the same client (no restart)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
import redis.exceptions

from render_gateway.stores.redis_client import RedisProbe, open_redis
from render_gateway.stores.unavailable import StoreUnavailable

from support.processes import free_port, stop_process
from support.redis_server import start_redis


async def test_a_closed_port_is_store_unavailable_at_once_for_commands_pipelines_scripts() -> None:
    client = open_redis(f"redis://127.0.0.1:{free_port()}/0")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await client.get("k")
        pipe = client.pipeline(transaction=True)
        pipe.set("k", "v")
        with pytest.raises(StoreUnavailable):
            await pipe.execute()
        script = client.register_script("return 1")
        with pytest.raises(StoreUnavailable) as raised:
            await script(keys=[], args=[])
        # Still a redis-py ConnectionError: code that catches RedisError keeps catching it.
        assert isinstance(raised.value, redis.exceptions.ConnectionError)
        assert "127.0.0.1" not in str(raised.value)
        assert time.monotonic() - started < 3
        assert await RedisProbe(f"redis://127.0.0.1:{free_port()}/0").reachable() is False
    finally:
        await client.aclose()


async def test_redis_errors_that_are_not_outages_are_not_store_unavailable(
    tmp_path: Path,
) -> None:
    server = start_redis(tmp_path / "redis")
    client = open_redis(server.url)
    try:
        await client.set("text", "v")
        with pytest.raises(redis.exceptions.ResponseError) as raised:
            await client.lpush("text", "x")  # WRONGTYPE: a bug, not an outage
        assert not isinstance(raised.value, StoreUnavailable)
    finally:
        await client.aclose()
        stop_process(server.process)


async def test_the_probe_and_the_client_recover_when_redis_is_back_on_its_port(
    tmp_path: Path,
) -> None:
    server = start_redis(tmp_path / "redis")
    client, probe = open_redis(server.url), RedisProbe(server.url)
    try:
        await client.set("kept", "1")  # acknowledged under appendfsync always
        assert await probe.reachable() is True
        server.process.kill()
        server.process.wait(timeout=10)
        started = time.monotonic()
        assert await probe.reachable() is False
        with pytest.raises(StoreUnavailable):
            await client.get("kept")
        assert time.monotonic() - started < 5
        server = start_redis(server.directory, server.port)
        assert await probe.reachable() is True
        assert await client.get("kept") == b"1"  # the same client, reconnected
    finally:
        await client.aclose()
        await probe.close()
        stop_process(server.process)


def test_the_sync_client_of_the_consumer_threads_is_bounded_too() -> None:
    from render_gateway.stores.redis_usage_log import open_sync_redis

    client = open_sync_redis(f"redis://127.0.0.1:{free_port()}/0")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            client.get("k")
        pipe = client.pipeline()
        pipe.get("k")
        with pytest.raises(StoreUnavailable):
            pipe.execute()
        assert time.monotonic() - started < 3
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] and kwargs["socket_connect_timeout"]
    finally:
        client.close()

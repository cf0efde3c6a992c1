"""The record of what every replica sharing one Redis must agree on (cluster_agreement.py): one
value under one key, with a lifetime the live replicas keep renewing, so that it is replaced
only once no replica holding it is left."""

from __future__ import annotations

from typing import Protocol

import redis.asyncio as aioredis

from render_gateway.stores.redis_client import key, open_redis

# Claim the record if it is absent, renew it if it holds our value; otherwise answer the value
# held (and change nothing). One script: no replica can slip in between the read and the write.
_HOLD = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""


class ClusterRecord(Protocol):
    async def hold(self, value: str, ttl_seconds: float) -> str | None:
        """Claim or renew the record with ``value``; the value others hold if it differs."""
        ...

    async def close(self) -> None: ...


class MemoryClusterRecord:
    """This process only: whatever it holds first is the record (no lifetime: for tests)."""

    def __init__(self) -> None:
        self.value: str | None = None

    async def hold(self, value: str, ttl_seconds: float) -> str | None:
        if self.value is not None and self.value != value:
            return self.value
        self.value = value
        return None

    async def close(self) -> None:
        return None


class RedisClusterRecord:
    def __init__(self, client: aioredis.Redis, name: str = "agreement") -> None:
        self._client = client
        self._key = key("cluster", name)

    async def hold(self, value: str, ttl_seconds: float) -> str | None:
        held = await self._client.eval(
            _HOLD, 1, self._key, value, str(max(1, int(ttl_seconds * 1000)))
        )
        if held is None:
            return None
        return held.decode("utf-8") if isinstance(held, bytes) else str(held)

    async def forget(self) -> None:
        await self._client.delete(self._key)

    async def close(self) -> None:
        await self._client.aclose()


def open_cluster_record(url: str) -> RedisClusterRecord:
    """The record in the Redis at ``url`` (the jobs store's: replicas share it)."""
    return RedisClusterRecord(open_redis(url))

"""Connecting the Redis implementations of the stores: one URL (``redis://host:port/db`` or
``rediss://`` for TLS, ``[gateway.shared] url``), an asyncio client per store, and the key
namespace every implementation writes under (``render:<concern>:…``), so that one Redis can
hold several concerns, and tests can keep apart by prefix."""

from __future__ import annotations

import redis.asyncio as aioredis

KEY_PREFIX = "render"


def open_redis(url: str, *, password: str | None = None) -> aioredis.Redis:
    """An asyncio client for ``url`` (bytes in, bytes out). No I/O until the first command."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url, password=password, decode_responses=False, health_check_interval=30
    )
    return client


def key(concern: str, *parts: str) -> str:
    """``render:<concern>:<part>:…``."""
    return ":".join((KEY_PREFIX, concern, *parts))

"""Connecting the Redis implementations of the stores: one URL (``redis://host:port/db`` or
``rediss://`` for TLS, ``[gateway.shared] url``), an asyncio client per store, and the key
namespace every implementation writes under (``render:<concern>:…``), so that one Redis can
hold several concerns, and tests can keep apart by prefix."""

from __future__ import annotations

import redis.asyncio as aioredis

KEY_PREFIX = "render"

# The password (AUTH) of every client this process opens: ``[gateway.shared] password_file``,
# set once at start by whoever read the configuration (the stores never read it), so that no
# store's constructor needs to carry it.
_process_password: str | None = None


def use_password(password: str | None) -> None:
    """Every Redis client opened from now on authenticates with ``password`` (None: none)."""
    global _process_password  # one process-wide setting, set at start
    _process_password = password


def client_password(password: str | None = None) -> str | None:
    """``password`` if given, else the process's. A password inside the URL
    (``redis://:pw@host``) wins over both: redis-py's ``from_url`` lets the URL override."""
    return password if password is not None else _process_password


def open_redis(url: str, *, password: str | None = None) -> aioredis.Redis:
    """An asyncio client for ``url`` (bytes in, bytes out). No I/O until the first command."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url, password=client_password(password), decode_responses=False, health_check_interval=30
    )
    return client


def key(concern: str, *parts: str) -> str:
    """``render:<concern>:<part>:…``."""
    return ":".join((KEY_PREFIX, concern, *parts))

"""Connecting the Redis implementations of the stores: one URL (``redis://host:port/db`` or
``rediss://`` for TLS, ``[gateway.shared] url``), an asyncio client per store, and the key
namespace every implementation writes under (``render:<concern>:…``), so that one Redis can
hold several concerns, and tests can keep apart by prefix."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.client
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from render_gateway.stores.unavailable import StoreUnavailable

KEY_PREFIX = "render"

# A Redis that is down refuses at once; one that is blackholed must not hold a request longer
# than these. The read timeout is above every blocking command the stores send (XREAD BLOCK
# 1 s, BLPOP 1 s: redis_events.py), so that only a silent Redis trips it.
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0
# One quick retry on a fresh connection: after Redis restarts, the pooled connections are dead
# and the first command on each fails; a second try reconnects. More would only delay the 503.
RETRY = AsyncRetry(ExponentialBackoff(cap=0.2, base=0.05), retries=1)
SYNC_RETRY = Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1)  # the threads' clients
PING_TIMEOUT_S = 1.0  # /ready answers within about this much when Redis does not


class RedisUnavailable(StoreUnavailable, RedisConnectionError):
    """Redis refused, timed out or is still loading its data (LOADING after a restart, while
    it replays the AOF). Still a redis-py ConnectionError, so that code catching RedisError
    keeps catching it; and a StoreUnavailable, which the HTTP layer answers with 503."""


@contextmanager
def unavailable_as_store_error() -> Iterator[None]:
    """Redis's "cannot reach it" errors (BusyLoadingError and AuthenticationError are
    ConnectionErrors) as RedisUnavailable; its other errors (a script's, a wrong type) as
    they are, since they are bugs, not outages."""
    try:
        yield
    except RedisUnavailable:
        raise
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise RedisUnavailable(f"redis unavailable: {type(exc).__name__}") from exc


class _GuardedPipeline(Pipeline):
    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        with unavailable_as_store_error():
            return await super().execute(raise_on_error)

    async def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        with unavailable_as_store_error():
            return await super().immediate_execute_command(*args, **options)  # type: ignore[no-untyped-call]


class GuardedRedis(aioredis.Redis):
    """An asyncio client whose every command and pipeline raises RedisUnavailable, not
    redis-py's own errors, when Redis cannot be reached: the one place they are mapped."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        with unavailable_as_store_error():
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return _GuardedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )


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


class _GuardedSyncPipeline(redis.client.Pipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        with unavailable_as_store_error():
            return super().execute(raise_on_error)

    def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        with unavailable_as_store_error():
            return super().immediate_execute_command(*args, **options)  # type: ignore[no-untyped-call]


class GuardedSyncRedis(redis.Redis):
    """The blocking client of the usage stream's consumer threads, mapped the same way, so
    that what a request reads through it (the usage lag) is a 503 too, not a 500."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        with unavailable_as_store_error():
            return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Any:
        return _GuardedSyncPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )


def open_redis(url: str, *, password: str | None = None) -> aioredis.Redis:
    """An asyncio client for ``url`` (bytes in, bytes out). No I/O until the first command."""
    client: aioredis.Redis = GuardedRedis.from_url(
        url,
        password=client_password(password),
        decode_responses=False,
        health_check_interval=30,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=READ_TIMEOUT_S,
        retry=RETRY,
    )
    return client


async def redis_reachable(client: aioredis.Redis) -> bool:
    """Whether Redis answers PING within ``PING_TIMEOUT_S`` (False while it is down, silent, or
    still loading its data: it answers LOADING then)."""
    try:
        async with asyncio.timeout(PING_TIMEOUT_S):
            return bool(await client.ping())
    except (StoreUnavailable, TimeoutError):
        return False


def key(concern: str, *parts: str) -> str:
    """``render:<concern>:<part>:…``."""
    return ":".join((KEY_PREFIX, concern, *parts))


class RedisProbe:
    """A client of its own for readiness: PING, bounded by ``PING_TIMEOUT_S``, so that /ready
    answers quickly while Redis is down and turns ready again once it is back (no restart)."""

    def __init__(self, url: str) -> None:
        self._client = open_redis(url)

    async def reachable(self) -> bool:
        return await redis_reachable(self._client)

    async def close(self) -> None:
        await self._client.aclose()

"""Leases for singleton roles: a named lease is held by one holder at a time until its time to
live runs out, so that with shared stores exactly one replica runs each singleton role
(``application.singleton.SingletonRole`` renews it while the role runs).

``memory://`` serves one process; ``sqlite:///abs/path.db`` is durable and safe across the
processes of one machine; ``redis://host:port/db`` (``rediss://`` for TLS) is shared by every
replica. Expiry is judged by the store's injected clock (wall time by default: holders in several
processes, or on several machines, must agree on it, which a monotonic clock would not).

Each lease carries a fencing token: a number that grows every time the lease changes hands, so
that a store written by the role's holder can refuse the writes of a stale holder (one whose
lease expired and was taken by another while it was paused) by their lower token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from render_gateway.stores.redis_client import KEY_PREFIX, open_redis
from render_gateway.stores.urls import parse_store_url


class LeaseStore(Protocol):
    async def acquire(self, name: str, holder: str, ttl_seconds: float) -> bool:
        """Take the lease, or renew it when ``holder`` already has it: it is then held until
        ``ttl_seconds`` from now. False while another holder's lease has not expired. Atomic."""
        ...

    async def release(self, name: str, holder: str) -> None:
        """Give the lease up at once; only the holder's own lease (anyone else's is left)."""
        ...

    async def holder(self, name: str) -> str | None:
        """Who holds the lease now; None when it is free or has expired."""
        ...

    async def token(self, name: str, holder: str) -> int | None:
        """The lease's fencing token while ``holder`` holds it; None otherwise (free, expired,
        or held by another). The token grows every time the lease changes hands, that is when
        it is taken by a holder other than the last one to have it, and never on a renewal: a
        holder that takes back its own lease with no one in between (after a release or an
        expiry) keeps its token."""
        ...

    async def close(self) -> None: ...


def check_ttl(ttl_seconds: float) -> None:
    if not ttl_seconds > 0:  # also refuses NaN: a lease that never expires never fails over
        raise ValueError(f"a lease's ttl_seconds must be positive, not {ttl_seconds!r}")


def open_lease_store(
    url: str, clock: Callable[[], float] = time.time, *, key_prefix: str = KEY_PREFIX
) -> LeaseStore:
    """The lease store ``url`` names (``[gateway.stores] leases``). ``key_prefix`` is the
    namespace of a Redis store's keys (tests keep apart by it); the others ignore it."""
    # Imported here: the implementations import ``check_ttl`` from this module.
    from render_gateway.stores.memory_leases import MemoryLeaseStore
    from render_gateway.stores.redis_leases import RedisLeaseStore
    from render_gateway.stores.sqlite_leases import SqliteLeaseStore

    parsed = parse_store_url("leases", url, ("memory", "sqlite", "redis", "rediss"))
    if parsed.scheme == "memory":
        return MemoryLeaseStore(clock)
    if parsed.scheme in ("redis", "rediss"):
        return RedisLeaseStore(open_redis(url), clock, key_prefix=key_prefix)
    return SqliteLeaseStore(parsed.sqlite_path(), clock)

"""Leases for singleton roles: a named lease is held by one holder at a time until its time to
live runs out, so that with shared stores exactly one replica runs each singleton role
(``application.singleton.SingletonRole`` renews it while the role runs).

``memory://`` serves one process; ``sqlite:///abs/path.db`` is durable and safe across the
processes of one machine. Expiry is judged by the store's injected clock (wall time by default:
holders in several processes must agree on it, which a monotonic clock would not).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

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

    async def close(self) -> None: ...


def check_ttl(ttl_seconds: float) -> None:
    if not ttl_seconds > 0:  # also refuses NaN: a lease that never expires never fails over
        raise ValueError(f"a lease's ttl_seconds must be positive, not {ttl_seconds!r}")


def open_lease_store(url: str, clock: Callable[[], float] = time.time) -> LeaseStore:
    """The lease store ``url`` names (``[gateway.stores] leases``)."""
    # Imported here: the implementations import ``check_ttl`` from this module.
    from render_gateway.stores.memory_leases import MemoryLeaseStore
    from render_gateway.stores.sqlite_leases import SqliteLeaseStore

    parsed = parse_store_url("leases", url, ("memory", "sqlite"))
    if parsed.scheme == "memory":
        return MemoryLeaseStore(clock)
    return SqliteLeaseStore(parsed.sqlite_path(), clock)

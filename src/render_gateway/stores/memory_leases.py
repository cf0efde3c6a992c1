"""``memory://`` leases: one process's dict. Each operation runs without an await, so it is
atomic on the event loop."""

from __future__ import annotations

import time
from collections.abc import Callable

from render_gateway.stores.leases import check_ttl


class MemoryLeaseStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._leases: dict[str, tuple[str, float]] = {}  # name → (holder, expires at)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the lease store is closed")

    async def acquire(self, name: str, holder: str, ttl_seconds: float) -> bool:
        check_ttl(ttl_seconds)
        self._check_open()
        now = self._clock()
        current = self._leases.get(name)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._leases[name] = (holder, now + ttl_seconds)
        return True

    async def release(self, name: str, holder: str) -> None:
        self._check_open()
        current = self._leases.get(name)
        if current is not None and current[0] == holder:
            del self._leases[name]

    async def holder(self, name: str) -> str | None:
        self._check_open()
        current = self._leases.get(name)
        if current is None or current[1] <= self._clock():
            return None
        return current[0]

    async def close(self) -> None:
        self._closed = True

"""``memory://`` leases: one process's dict. Each operation runs without an await, so it is
atomic on the event loop. A released lease keeps its entry (its holder and fencing token, no
longer in force), so that the token goes on growing when it changes hands."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from render_gateway.stores.leases import check_ttl


@dataclass
class _Lease:
    holder: str  # the last holder (in force only until ``expires_at``)
    expires_at: float  # -inf once released
    token: int


class MemoryLeaseStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the lease store is closed")

    async def acquire(self, name: str, holder: str, ttl_seconds: float) -> bool:
        check_ttl(ttl_seconds)
        self._check_open()
        now = self._clock()
        current = self._leases.get(name)
        if current is None:
            self._leases[name] = _Lease(holder, now + ttl_seconds, 1)
            return True
        if current.holder != holder:
            if current.expires_at > now:
                return False
            current.holder, current.token = holder, current.token + 1  # changes hands
        current.expires_at = now + ttl_seconds
        return True

    async def release(self, name: str, holder: str) -> None:
        self._check_open()
        current = self._leases.get(name)
        if current is not None and current.holder == holder:
            current.expires_at = -math.inf

    def _held(self, name: str) -> _Lease | None:
        self._check_open()
        current = self._leases.get(name)
        if current is None or current.expires_at <= self._clock():
            return None
        return current

    async def holder(self, name: str) -> str | None:
        current = self._held(name)
        return None if current is None else current.holder

    async def token(self, name: str, holder: str) -> int | None:
        current = self._held(name)
        return current.token if current is not None and current.holder == holder else None

    async def close(self) -> None:
        self._closed = True

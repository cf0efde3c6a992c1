"""``memory://`` backend slots: one process's dict, which counts what this process's pool
already counts (a single process needs no more). Each operation runs without an await, so it
is atomic on the event loop; expired slots are dropped only when a backend looks full, so that
a take on the request path is a dict lookup and an insert."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable

from render_gateway.stores.backend_slots import SLOT_LEASE_SECONDS, check_lease


class MemoryBackendSlots:
    def __init__(
        self, clock: Callable[[], float] = time.time, lease_seconds: float = SLOT_LEASE_SECONDS
    ) -> None:
        check_lease(lease_seconds)
        self._clock, self._lease = clock, lease_seconds
        self._held: dict[str, dict[str, float]] = {}  # backend id → token → expires at
        self._tokens = itertools.count(1)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the slot store is closed")

    async def take(self, backend_id: str, capacity: int) -> str | None:
        self._check_open()
        held = self._held.setdefault(backend_id, {})
        now = self._clock()
        if len(held) >= capacity:
            for token in [t for t, expires_at in held.items() if expires_at <= now]:
                del held[token]
            if len(held) >= capacity:
                return None
        token = str(next(self._tokens))
        held[token] = now + self._lease
        return token

    async def give_back(self, backend_id: str, token: str) -> None:
        self._check_open()
        self._held.get(backend_id, {}).pop(token, None)

    async def renew(self, backend_id: str, tokens: Iterable[str]) -> frozenset[str]:
        self._check_open()
        held = self._held.get(backend_id, {})
        now = self._clock()
        kept: set[str] = set()
        for token in tokens:
            expires_at = held.get(token)
            if expires_at is None:
                continue
            if expires_at <= now:
                del held[token]
                continue
            held[token] = now + self._lease
            kept.add(token)
        return frozenset(kept)

    async def close(self) -> None:
        self._closed = True

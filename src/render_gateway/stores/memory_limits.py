"""``memory://`` rate limits: the bucket states in one process's dictionary.

Atomic because each operation runs to completion on the event loop without awaiting. Memory
stays bounded: a bucket that has refilled to full is dropped (no state reads as a full bucket,
so nothing changes), swept at most once per ``prune_every_seconds`` of the clock. Only buckets
touched within about that long, or still refilling, are kept; a plan that never refills keeps
its customers' spent buckets, as it must to keep refusing them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from render_gateway.scheduling.token_bucket import (
    BucketConfig,
    BucketState,
    Decision,
    full_at,
    refund_to,
    take_from,
)

DEFAULT_PRUNE_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class _Held:
    state: BucketState
    full_at: float  # from then on the entry may be dropped


class MemoryRateLimits:
    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        prune_every_seconds: float = DEFAULT_PRUNE_EVERY_SECONDS,
    ) -> None:
        self._clock = clock
        self._prune_every = prune_every_seconds
        self._held: dict[str, _Held] = {}
        self._next_prune = clock() + prune_every_seconds

    async def take(self, key: str, config: BucketConfig, cost: float = 1.0) -> Decision:
        now = self._clock()
        state, decision = take_from(self._state(key), config, cost, now)
        self._keep(key, state, config, now)
        return decision

    async def refund(self, key: str, config: BucketConfig, cost: float = 1.0) -> None:
        now = self._clock()
        self._keep(key, refund_to(self._state(key), config, cost, now), config, now)

    async def close(self) -> None:
        self._held.clear()

    def buckets_held(self) -> int:
        """How many buckets are held (the rest are full)."""
        return len(self._held)

    def _state(self, key: str) -> BucketState | None:
        held = self._held.get(key)
        return held.state if held is not None else None

    def _keep(self, key: str, state: BucketState, config: BucketConfig, now: float) -> None:
        self._held[key] = _Held(state, full_at(state, config))
        if now >= self._next_prune:
            self._next_prune = now + self._prune_every
            self._held = {k: held for k, held in self._held.items() if held.full_at > now}

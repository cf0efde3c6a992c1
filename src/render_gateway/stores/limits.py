"""The rate-limit store: token buckets kept by key, each take one atomic read-modify-write.

The arithmetic is scheduling/token_bucket.py's pure ``take_from`` / ``refund_to`` on the stored
``BucketState``; a store only keeps the states and applies those functions so that two takes on
one key never both spend the same token. The bucket's config comes with every call (it follows
the caller's plan), so a store holds no config of its own.

``memory://`` is this process only (one replica). ``redis://`` / ``rediss://`` (stores/
redis_limits.py) shares the buckets among replicas: the same arithmetic runs as a Lua script,
behind the same Protocol and contract tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from render_gateway.scheduling.token_bucket import BucketConfig, Decision
from render_gateway.stores.urls import parse_store_url


class RateLimits(Protocol):
    async def take(self, key: str, config: BucketConfig, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from the key's bucket if they are there (a refused take takes
        nothing); atomic against every other take and refund on the key, wherever made."""
        ...

    async def refund(self, key: str, config: BucketConfig, cost: float = 1.0) -> None:
        """Give back what a take took, never past a full bucket."""
        ...

    async def close(self) -> None: ...


def limit_key(plan: str, customer_id: str) -> str:
    """The bucket key of a customer on a plan. The plan's length leads, so no plan or customer
    name (either may hold ':') can make two pairs one key: plan "admin:x" with customer "m" is
    "7:admin:x:m", plan "admin" with customer "x:m" is "5:admin:x:m"."""
    return f"{len(plan)}:{plan}:{customer_id}"


def open_rate_limits(url: str, clock: Callable[[], float] = time.time) -> RateLimits:
    """The store ``[gateway.stores] limits`` names. ``clock`` is wall-clock seconds: states
    shared by several processes must be counted on one clock that all of them read."""
    parsed = parse_store_url("limits", url, ("memory", "redis", "rediss"))
    if parsed.scheme == "memory":
        # Imported here, so that importing the Protocol (as api/ does) loads no implementation.
        from render_gateway.stores.memory_limits import MemoryRateLimits

        return MemoryRateLimits(clock)
    if parsed.scheme in ("redis", "rediss"):
        from render_gateway.stores.redis_client import open_redis
        from render_gateway.stores.redis_limits import RedisRateLimits

        return RedisRateLimits(open_redis(url), clock)
    raise AssertionError(f"unhandled scheme {parsed.scheme}")  # parse_store_url checked it

"""Per-customer rate limits: a continuously refilled token bucket, one per key.

A bucket holds up to ``capacity`` tokens and gains ``refill_per_second`` of them continuously;
a request of cost ``c`` is let through when ``c`` tokens are there, and takes them. A refused
request takes nothing, and a taken request that the service could not serve at all (no
capacity) is given its tokens back with ``refund``. Every answer carries what a ``429`` needs:
how long until the same request would pass, and how long until the bucket is full again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

Clock = Callable[[], float]
Key = TypeVar("Key", bound=Hashable)

# Relative slack on "enough tokens": a caller who waits exactly retry_after_seconds must pass,
# even when float rounding leaves the refill a hair short. The bucket may then dip this far
# below zero, which later refill pays back, so nothing is handed out for free.
_SLACK = 1e-9


@dataclass(frozen=True)
class BucketConfig:
    capacity: float
    refill_per_second: float

    def __post_init__(self) -> None:
        if not (self.capacity > 0 and math.isfinite(self.capacity)):
            raise ValueError(f"capacity must be a positive number, not {self.capacity}")
        if not (self.refill_per_second >= 0 and math.isfinite(self.refill_per_second)):
            raise ValueError(
                f"refill_per_second must be zero or positive, not {self.refill_per_second}"
            )


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: float  # tokens left after this take, never shown below zero
    retry_after_seconds: float  # until this cost would pass: 0 when allowed, inf if never
    reset_after_seconds: float  # until the bucket is full again: inf if it never refills


class TokenBucket:
    def __init__(
        self, config: BucketConfig, clock: Clock = time.monotonic, *, fill_ratio: float = 1.0
    ) -> None:
        if not 0.0 <= fill_ratio <= 1.0:
            raise ValueError(f"fill_ratio must be in [0, 1], not {fill_ratio}")
        self._config = config
        self._clock = clock
        self._tokens = config.capacity * fill_ratio
        self._updated = clock()

    @property
    def config(self) -> BucketConfig:
        return self._config

    def fill_ratio(self) -> float:
        """How full the bucket is now, from 0 to 1."""
        self._refill()
        return min(1.0, max(0.0, self._tokens / self._config.capacity))

    def take(self, cost: float = 1.0) -> Decision:
        if not (cost >= 0 and math.isfinite(cost)):
            raise ValueError(f"cost must be zero or positive, not {cost}")
        self._refill()
        capacity = self._config.capacity
        if cost > capacity:
            # No amount of waiting makes this fit.
            return self._decision(allowed=False, retry_after=math.inf)
        if self._tokens + capacity * _SLACK >= cost:
            self._tokens -= cost
            return self._decision(allowed=True, retry_after=0.0)
        return self._decision(allowed=False, retry_after=self._seconds_until(cost))

    def refund(self, cost: float = 1.0) -> None:
        """Give back what a take took (never past a full bucket)."""
        if not (cost >= 0 and math.isfinite(cost)):
            raise ValueError(f"cost must be zero or positive, not {cost}")
        self._refill()
        self._tokens = min(self._config.capacity, self._tokens + cost)

    def _refill(self) -> None:
        now = self._clock()
        # A clock that steps back (it should not) gives no tokens and does not rewind us.
        elapsed = max(0.0, now - self._updated)
        self._updated = max(now, self._updated)
        self._tokens = min(
            self._config.capacity, self._tokens + elapsed * self._config.refill_per_second
        )

    def _seconds_until(self, tokens: float) -> float:
        missing = tokens - self._tokens
        if missing <= 0:
            return 0.0
        rate = self._config.refill_per_second
        return missing / rate if rate > 0 else math.inf

    def _decision(self, *, allowed: bool, retry_after: float) -> Decision:
        return Decision(
            allowed=allowed,
            remaining=max(0.0, self._tokens),
            retry_after_seconds=retry_after,
            reset_after_seconds=self._seconds_until(self._config.capacity),
        )


class RateLimiter(Generic[Key]):
    """One bucket per key, made on first use from ``config_for(key)``.

    Keys are any hashable value, e.g. ``(plan, customer)``: a tuple, never one string joined
    with a separator that a plan or customer name could contain.

    ``config_for`` is asked on every take, so a plan change applies at once: the key's bucket is
    rebuilt at the same fill ratio, neither a free refill nor a penalty for the customer.
    """

    def __init__(
        self, config_for: Callable[[Key], BucketConfig], clock: Clock = time.monotonic
    ) -> None:
        self._config_for = config_for
        self._clock = clock
        self._buckets: dict[Key, TokenBucket] = {}

    def take(self, key: Key, cost: float = 1.0) -> Decision:
        return self._bucket(key).take(cost)

    def refund(self, key: Key, cost: float = 1.0) -> None:
        self._bucket(key).refund(cost)

    def prune(self) -> int:
        """Drop full buckets (a new bucket starts full, so nothing changes) and say how many."""
        full = [key for key, bucket in self._buckets.items() if bucket.fill_ratio() >= 1.0]
        for key in full:
            del self._buckets[key]
        return len(full)

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: Key) -> TokenBucket:
        config = self._config_for(key)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(config, self._clock)
        elif bucket.config != config:
            bucket = self._buckets[key] = TokenBucket(
                config, self._clock, fill_ratio=bucket.fill_ratio()
            )
        return bucket

"""Per-customer rate limits: the arithmetic of a continuously refilled token bucket.

A bucket holds up to ``capacity`` tokens and gains ``refill_per_second`` of them continuously;
a request of cost ``c`` is let through when ``c`` tokens are there, and takes them. A refused
request takes nothing, and a taken request that the service could not serve at all (no
capacity) is given its tokens back with ``refund_to``. Every answer carries what a ``429``
needs: how long until the same request would pass, and how long until the bucket is full again.

Everything here is a pure function of the stored ``BucketState`` (tokens, when they were
counted), the bucket's config and the time: a store (stores/limits.py) applies it atomically to
the state it keeps, in process memory or, for many replicas, in Redis, where the same few float
operations run in a Lua script. No state means a full bucket, so a store may forget a full one.

The state holds tokens, not a fill ratio: when a key's config changes (the gateway keys buckets
by plan and customer, so only a reconfigured plan does that), the tokens carry over, capped at
the new capacity, and refill at the new rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]

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
class BucketState:
    """What a store keeps per key: the tokens there were at ``updated_at`` (clock seconds)."""

    tokens: float
    updated_at: float


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: float  # tokens left after this take, never shown below zero
    retry_after_seconds: float  # until this cost would pass: 0 when allowed, inf if never
    reset_after_seconds: float  # until the bucket is full again: inf if it never refills


def take_from(
    state: BucketState | None, config: BucketConfig, cost: float, now: float
) -> tuple[BucketState, Decision]:
    """Take ``cost`` tokens if they are there. The state to store comes back with the answer;
    a refused take returns ``state`` unchanged (a full bucket if there was none)."""
    _check_cost(cost)
    current = _refilled(state, config, now)
    unchanged = state if state is not None else current
    if cost > config.capacity:
        # No amount of waiting makes this fit.
        return unchanged, _decision(current, config, allowed=False, retry_after=math.inf)
    if current.tokens + config.capacity * _SLACK >= cost:
        taken = BucketState(current.tokens - cost, current.updated_at)
        return taken, _decision(taken, config, allowed=True, retry_after=0.0)
    retry_after = _seconds_until(current, config, cost)
    return unchanged, _decision(current, config, allowed=False, retry_after=retry_after)


def refund_to(
    state: BucketState | None, config: BucketConfig, cost: float, now: float
) -> BucketState:
    """Give back what a take took (never past a full bucket)."""
    _check_cost(cost)
    current = _refilled(state, config, now)
    return BucketState(min(config.capacity, current.tokens + cost), current.updated_at)


def full_at(state: BucketState, config: BucketConfig) -> float:
    """When the bucket is full again (inf if it never refills): from then on, forgetting the
    state changes nothing, since no state reads as a full bucket."""
    missing = config.capacity - state.tokens
    if missing <= 0:
        return state.updated_at
    rate = config.refill_per_second
    return state.updated_at + missing / rate if rate > 0 else math.inf


def _check_cost(cost: float) -> None:
    if not (cost >= 0 and math.isfinite(cost)):
        raise ValueError(f"cost must be zero or positive, not {cost}")


def _refilled(state: BucketState | None, config: BucketConfig, now: float) -> BucketState:
    if state is None:
        return BucketState(config.capacity, now)
    # A clock that steps back (it should not) gives no tokens and does not rewind the state.
    elapsed = max(0.0, now - state.updated_at)
    tokens = min(config.capacity, state.tokens + elapsed * config.refill_per_second)
    return BucketState(tokens, max(now, state.updated_at))


def _seconds_until(state: BucketState, config: BucketConfig, tokens: float) -> float:
    missing = tokens - state.tokens
    if missing <= 0:
        return 0.0
    rate = config.refill_per_second
    return missing / rate if rate > 0 else math.inf


def _decision(
    state: BucketState, config: BucketConfig, *, allowed: bool, retry_after: float
) -> Decision:
    return Decision(
        allowed=allowed,
        remaining=max(0.0, state.tokens),
        retry_after_seconds=retry_after,
        reset_after_seconds=_seconds_until(state, config, config.capacity),
    )

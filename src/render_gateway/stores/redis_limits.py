"""``redis://`` rate limits: token buckets shared by every gateway replica on one Redis.

How the data lies: one hash per bucket, ``render:limits:<limit key>`` (the prefix is an option,
so tests keep apart), with the fields ``tokens`` and ``updated_at`` (clock seconds), both written
with ``%.17g`` so a double goes in and comes out bit for bit. No hash means a full bucket, as in
``scheduling/token_bucket.py``. Each write sets PEXPIRE to the time the bucket is full again, so
an idle bucket vanishes on its own; one that never refills (rate 0) has no expiry, and one that
is full already is deleted.

Why it is atomic: a take and a refund are each ONE Lua script (read the hash, refill, decide,
write, expire), which Redis runs without interleaving any other command, so two takes on one key,
from any replicas, never both spend the same token. The scripts do ``take_from`` / ``refund_to``'s
float operations in the same order on the same doubles (Lua numbers are doubles), so a script's
answer is the one the pure functions give; the Decision is then computed in Python from the
refilled state the script returns, by ``take_from`` itself (idempotent on a refilled state).

The time is the injected clock's, passed to the script as an argument (not Redis TIME), so tests
run on a FakeClock — and so replicas sharing buckets must have clocks that agree (NTP): a replica
ahead of the others refills early by its lead, one behind gives nothing until it catches up.
The expiry is a duration measured on Redis's own clock, which only has to run at the same rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from render_gateway.scheduling.token_bucket import (
    _SLACK,
    BucketConfig,
    BucketState,
    Decision,
    refund_to,
    take_from,
)
from render_gateway.stores.redis_client import key as redis_key

# The refill of ``_refilled``, the tokens check of ``take_from`` and the expiry at ``full_at``.
# KEYS[1] the bucket hash; ARGV capacity, refill_per_second, cost, now, slack.
_COMMON = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local slack = tonumber(ARGV[5])
local stored = redis.call('HMGET', KEYS[1], 'tokens', 'updated_at')
local tokens, updated_at
if stored[1] then
  local old_tokens = tonumber(stored[1])
  local old_at = tonumber(stored[2])
  local elapsed = now - old_at
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(capacity, old_tokens + elapsed * rate)
  updated_at = math.max(now, old_at)
else
  tokens = capacity
  updated_at = now
end
local function keep(new_tokens)
  local missing = capacity - new_tokens
  if missing <= 0 then
    redis.call('DEL', KEYS[1])
    return
  end
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', new_tokens),
             'updated_at', string.format('%.17g', updated_at))
  if rate > 0 then
    local ms = math.ceil((updated_at + missing / rate - now) * 1000) + 1
    if ms < 1 then ms = 1 end
    if ms < 1e15 then
      redis.call('PEXPIRE', KEYS[1], string.format('%d', ms))
      return
    end
  end
  redis.call('PERSIST', KEYS[1])
end
"""

# Returns {taken (0/1), refilled tokens, refilled updated_at}.
_TAKE = (
    _COMMON
    + """
local taken = 0
if cost <= capacity and tokens + capacity * slack >= cost then
  taken = 1
  keep(tokens - cost)
end
return {taken, string.format('%.17g', tokens), string.format('%.17g', updated_at)}
"""
)

_REFUND = (
    _COMMON
    + """
keep(math.min(capacity, tokens + cost))
return 1
"""
)


def _arg(number: float) -> str:
    """A double as text that Lua's tonumber reads back exactly (repr is round-trip exact)."""
    return repr(float(number))


class RedisRateLimits:
    def __init__(
        self,
        client: aioredis.Redis,
        clock: Callable[[], float] = time.time,
        *,
        prefix: str = redis_key("limits"),
        owns_client: bool = True,
    ) -> None:
        self._client = client
        self._clock = clock
        self._prefix = prefix
        self._owns_client = owns_client
        self._take = client.register_script(_TAKE)
        self._refund = client.register_script(_REFUND)

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    def _args(self, config: BucketConfig, cost: float, now: float) -> list[str]:
        return [
            _arg(config.capacity),
            _arg(config.refill_per_second),
            _arg(cost),
            _arg(now),
            _arg(_SLACK),
        ]

    async def take(self, key: str, config: BucketConfig, cost: float = 1.0) -> Decision:
        now = self._clock()
        _check(config, cost, now)
        reply: Any = await self._take(keys=[self._key(key)], args=self._args(config, cost, now))
        taken, tokens, updated_at = int(reply[0]), float(reply[1]), float(reply[2])
        # take_from on the refilled state refills nothing more, so it decides as the script did.
        _, decision = take_from(BucketState(tokens, updated_at), config, cost, now)
        if decision.allowed != bool(taken):
            raise AssertionError(f"rate-limit script and take_from disagree on {key!r}")
        return decision

    async def refund(self, key: str, config: BucketConfig, cost: float = 1.0) -> None:
        now = self._clock()
        _check(config, cost, now)
        await self._refund(keys=[self._key(key)], args=self._args(config, cost, now))

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def _check(config: BucketConfig, cost: float, now: float) -> None:
    """The pure functions' own argument checks (a bad cost raises ValueError), before anything
    reaches Redis; and a clock that reads a finite time."""
    refund_to(None, config, cost, now)
    if not math.isfinite(now):
        raise ValueError(f"the clock read {now}, not a time")

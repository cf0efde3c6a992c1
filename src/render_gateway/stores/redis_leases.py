"""``redis://`` leases: shared by every replica on one Redis.

How the data lies (``<p>`` is the key prefix, ``render`` by default):

* ``<p>:lease:<name>``: a hash ``{holder, expires_at, token}``: the last holder, when its holding
  ends by the stores' clock (``repr`` of a float; the field is absent once released) and the
  fencing token of its holding. A ``PEXPIRE`` of the ttl plus ``SAFETY_NET_SECONDS`` is only a
  safety net that removes a lease nobody renews any more; expiry itself is judged by the clock.
* ``<p>:lease-token:<name>``: a plain integer without expiry, the last token handed out
  (``INCR``), so tokens keep growing even after the safety net removed the hash.

Expiry is judged by the clock the store is given (wall time by default), passed to each script
as an argument, as the other implementations judge it: the replicas' clocks must agree (NTP),
to well within a lease's ttl. Every operation is one Lua script, which Redis runs atomically:
no other command runs between a script's read of the lease and its write, so two replicas can
never both see a lease free and both take it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from render_gateway.stores.leases import check_ttl
from render_gateway.stores.redis_client import KEY_PREFIX

# The hash outlives its holding by this much before Redis drops it: far more than the clocks of
# the replicas and of Redis may differ, so the net never frees a lease the clock still holds.
SAFETY_NET_SECONDS = 60.0
_LONGEST_NET_SECONDS = 10.0 * 365 * 24 * 3600  # a ttl of inf still gets a (finite) PEXPIRE

# KEYS: lease hash, token counter. ARGV: holder, now, expires_at, pexpire ms. 1 if taken.
_ACQUIRE = """
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder ~= ARGV[1] then
  local expires = redis.call('HGET', KEYS[1], 'expires_at')
  if expires and tonumber(expires) > tonumber(ARGV[2]) then
    return 0
  end
  local token = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', token)
end
redis.call('HSET', KEYS[1], 'expires_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: lease hash. ARGV: holder. Ends the holding, keeping holder and token.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'expires_at')
end
return 0
"""

# KEYS: lease hash. ARGV: now. {holder, token} while held, else nil.
_HELD = """
local lease = redis.call('HMGET', KEYS[1], 'holder', 'expires_at', 'token')
if lease[1] and lease[2] and tonumber(lease[2]) > tonumber(ARGV[1]) then
  return {lease[1], lease[3]}
end
return false
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisLeaseStore:
    def __init__(
        self,
        client: aioredis.Redis,
        clock: Callable[[], float] = time.time,
        *,
        key_prefix: str = KEY_PREFIX,
    ) -> None:
        self._client, self._clock, self._prefix = client, clock, key_prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._held_script = client.register_script(_HELD)
        self._closed = False

    def _keys(self, name: str) -> tuple[str, str]:
        return f"{self._prefix}:lease:{name}", f"{self._prefix}:lease-token:{name}"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the lease store is closed")

    async def acquire(self, name: str, holder: str, ttl_seconds: float) -> bool:
        check_ttl(ttl_seconds)
        self._check_open()
        now = self._clock()
        net = min(ttl_seconds + SAFETY_NET_SECONDS, _LONGEST_NET_SECONDS)
        taken = await self._acquire(
            keys=list(self._keys(name)),
            args=[holder, repr(now), repr(now + ttl_seconds), math.ceil(net * 1000)],
        )
        return int(taken) == 1

    async def release(self, name: str, holder: str) -> None:
        self._check_open()
        await self._release(keys=[self._keys(name)[0]], args=[holder])

    async def _held(self, name: str) -> tuple[str, int] | None:
        self._check_open()
        lease = await self._held_script(keys=[self._keys(name)[0]], args=[repr(self._clock())])
        if not lease:
            return None
        holder, token = lease
        return _text(holder), int(_text(token))

    async def holder(self, name: str) -> str | None:
        held = await self._held(name)
        return None if held is None else held[0]

    async def token(self, name: str, holder: str) -> int | None:
        held = await self._held(name)
        return held[1] if held is not None and held[0] == holder else None

    async def close(self) -> None:
        self._closed = True
        await self._client.aclose()

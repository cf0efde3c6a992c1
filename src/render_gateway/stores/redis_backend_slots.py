"""``redis://`` backend slots: one backend's capacity shared by every replica on one Redis.

How the data lies (``<p>`` is the key prefix, ``render`` by default):

* ``<p>:slots:<backend id>``: a sorted set of the slots held, each member a token (the holder's
  random id and a counter), scored by when its lease ends by the stores' clock. A slot is held
  while its score is above now; the scripts drop the members at or below it. A ``PEXPIRE`` of
  the lease plus ``SAFETY_NET_SECONDS`` only removes a set nobody takes or renews any more.

Expiry is judged by the clock the store is given (wall time by default), passed to each script
as an argument: the replicas' clocks must agree (NTP) to well within a lease. Every operation is
one Lua script, which Redis runs atomically, so two replicas never both see the last slot free.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis

from render_gateway.stores.backend_slots import SLOT_LEASE_SECONDS, check_lease
from render_gateway.stores.redis_client import KEY_PREFIX

# The set outlives its last lease by this much before Redis drops it: far more than the clocks
# of the replicas may differ, so the net never frees a slot the clock still holds.
SAFETY_NET_SECONDS = 60.0
_LONGEST_NET_SECONDS = 10.0 * 365 * 24 * 3600  # a lease of inf still gets a (finite) PEXPIRE

# KEYS: the backend's slot set. ARGV: now, expires_at, capacity, token, pexpire ms. 1 if taken.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: the backend's slot set. ARGV: token.
_GIVE_BACK = """
redis.call('ZREM', KEYS[1], ARGV[1])
return 0
"""

# KEYS: the backend's slot set. ARGV: now, expires_at, pexpire ms, tokens…. The tokens kept.
_RENEW = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local kept = {}
for i = 4, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
    kept[#kept + 1] = ARGV[i]
  end
end
if #kept > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return kept
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBackendSlots:
    def __init__(
        self,
        client: aioredis.Redis,
        clock: Callable[[], float] = time.time,
        lease_seconds: float = SLOT_LEASE_SECONDS,
        *,
        key_prefix: str = KEY_PREFIX,
    ) -> None:
        check_lease(lease_seconds)
        self._client, self._clock, self._lease = client, clock, lease_seconds
        self._prefix = key_prefix
        self._net_ms = math.ceil(
            min(lease_seconds + SAFETY_NET_SECONDS, _LONGEST_NET_SECONDS) * 1000
        )
        # Tokens are unique across replicas by a random part of their own, and within this
        # store by a counter.
        self._holder = secrets.token_hex(8)
        self._tokens = itertools.count(1)
        self._take = client.register_script(_TAKE)
        self._give_back = client.register_script(_GIVE_BACK)
        self._renew = client.register_script(_RENEW)
        self._closed = False

    def _key(self, backend_id: str) -> str:
        return f"{self._prefix}:slots:{backend_id}"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the slot store is closed")

    async def take(self, backend_id: str, capacity: int) -> str | None:
        self._check_open()
        now = self._clock()
        token = f"{self._holder}:{next(self._tokens)}"
        args: list[str | int] = [repr(now), repr(now + self._lease), capacity, token, self._net_ms]
        taken = await self._take(keys=[self._key(backend_id)], args=args)
        return token if int(taken) == 1 else None

    async def give_back(self, backend_id: str, token: str) -> None:
        self._check_open()
        await self._give_back(keys=[self._key(backend_id)], args=[token])

    async def renew(self, backend_id: str, tokens: Iterable[str]) -> frozenset[str]:
        self._check_open()
        renewing = list(tokens)
        if not renewing:
            return frozenset()
        now = self._clock()
        args: list[str | int] = [repr(now), repr(now + self._lease), self._net_ms, *renewing]
        kept = await self._renew(keys=[self._key(backend_id)], args=args)
        return frozenset(_text(token) for token in kept)

    async def close(self) -> None:
        self._closed = True
        await self._client.aclose()

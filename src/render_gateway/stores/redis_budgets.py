"""``redis://`` budgets: one ledger shared by every gateway replica on one Redis.

How the data lies (``P`` is the prefix, ``render:budgets`` unless given, so tests keep apart):

* ``P:month:<len(customer)>:<customer>:<YYYY-MM>`` — a hash per customer and month with the
  fields ``sg`` / ``sn`` (spent: GPU-seconds, cost nanos) and ``rg`` / ``rn`` (held by open
  reservations). The customer's length leads, so no customer id (which may hold ':') makes two
  customer-months one key. Kept without expiry (a small hash per customer-month).
* ``P:hold:<key>`` — a hash per open reservation: ``customer``, ``month``, ``plan``, ``g``,
  ``n`` (what it holds) and ``mk`` (the name of its month hash).
* ``P:holds`` — a set of the request keys held (``open_reservations`` is its SCARD).
* ``P:since`` — a sorted set of the same keys, each scored by when its hold was made (unix
  seconds, this process's clock), for ``holds_older_than``. Holds made before it existed are
  added by the first ``holds_older_than`` that finds it smaller than ``P:holds``, at that time.
* ``P:settled:<key>`` — a string (the month) per settled key, with an EXPIREAT at the start of
  the month after the next (at least a day from now), so a retried settle bills nothing for the
  key's month and the next, and old settlements vanish on their own.

Why it is atomic: reserve, charge, release, settle, add_spent and holds_older_than are each ONE
Lua script (check,
then write every key involved), which Redis runs without interleaving any other command: two
concurrent reserves on any replicas cannot both take the last of a budget, a key is held or
settled once. ``state`` is one HMGET, ``open_reservations`` one SCARD. The scripts also touch the
month hash that a hold names (``mk``), a key not passed in KEYS: this store is for one Redis
(with replicas), not Redis Cluster.

Numbers: GPU-seconds are doubles (Lua numbers are doubles) and the scripts add them in the same
order as MemoryBudgetStore; cost is integer nanos, held in the same doubles, so exact up to 2^53
nanos (about 9 million in money) per sum. Every value is written with ``%.17g``, which a double
survives bit for bit (HINCRBYFLOAT is not used: it rounds in long double).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from render_gateway.core.budgets import (
    Amount,
    BudgetExceeded,
    BudgetLimit,
    BudgetState,
    Reservation,
)
from render_gateway.core.usage_records import NANOS
from render_gateway.stores.budgets import AgedHold
from render_gateway.stores.redis_client import key as redis_key

# Shared helpers: read a number field (absent reads 0), write one exactly, and drop a hold.
_HELPERS = """
local function num(k, f)
  return tonumber(redis.call('HGET', k, f) or '0')
end
local function put(k, f, v)
  redis.call('HSET', k, f, string.format('%.17g', v))
end
local function drop(hold, holds, since, name)
  local h = redis.call('HMGET', hold, 'customer', 'month', 'plan', 'g', 'n', 'mk')
  if not h[1] then return nil end
  local g, n, mk = tonumber(h[4]), tonumber(h[5]), h[6]
  local rg, rn = num(mk, 'rg') - g, num(mk, 'rn') - n
  if rg == 0 and rn == 0 then
    redis.call('HDEL', mk, 'rg', 'rn')
  else
    put(mk, 'rg', rg)
    put(mk, 'rn', rn)
  end
  redis.call('DEL', hold)
  redis.call('SREM', holds, name)
  redis.call('ZREM', since, name)
  return {h[1], h[2], h[3], h[4], h[5]}
end
"""

# KEYS: hold, settled, month hash, holds set, since zset. ARGV: key, customer, month, plan, g,
# n, force, limit g ('' for none), limit n ('' for none), now (unix seconds).
# Returns {'held', customer, month, plan, g, n} | {'settled'} | {'exceeded', what, committed}
# | {'new'}.
_RESERVE = (
    _HELPERS
    + """
local h = redis.call('HMGET', KEYS[1], 'customer', 'month', 'plan', 'g', 'n')
if h[1] then return {'held', h[1], h[2], h[3], h[4], h[5]} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'settled'} end
local g, n = tonumber(ARGV[5]), tonumber(ARGV[6])
local mk = KEYS[3]
local rg, rn = num(mk, 'rg'), num(mk, 'rn')
if ARGV[7] ~= '1' then
  local cg, cn = num(mk, 'sg') + rg, num(mk, 'sn') + rn
  if ARGV[8] ~= '' and cg + g > tonumber(ARGV[8]) then
    return {'exceeded', 'gpu', string.format('%.17g', cg)}
  end
  if ARGV[9] ~= '' and cn + n > tonumber(ARGV[9]) then
    return {'exceeded', 'cost', string.format('%.17g', cn)}
  end
end
redis.call('HSET', KEYS[1], 'customer', ARGV[2], 'month', ARGV[3], 'plan', ARGV[4],
           'g', string.format('%.17g', g), 'n', string.format('%.17g', n), 'mk', mk)
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[10], ARGV[1])
put(mk, 'rg', rg + g)
put(mk, 'rn', rn + n)
return {'new'}
"""
)

# KEYS: hold. ARGV: needed g, needed n, limit g, limit n. Returns 1 (fits) or 0 (crosses).
_CHARGE = (
    _HELPERS
    + """
local h = redis.call('HMGET', KEYS[1], 'g', 'n', 'mk')
if not h[1] then return 1 end
local g, n, mk = tonumber(h[1]), tonumber(h[2]), h[3]
local grown_g = math.max(g, tonumber(ARGV[1]))
local grown_n = math.max(n, tonumber(ARGV[2]))
if grown_g == g and grown_n == n then return 1 end
local rg = num(mk, 'rg') + (grown_g - g)
local rn = num(mk, 'rn') + (grown_n - n)
put(mk, 'rg', rg)
put(mk, 'rn', rn)
put(KEYS[1], 'g', grown_g)
put(KEYS[1], 'n', grown_n)
if ARGV[3] ~= '' and num(mk, 'sg') + rg > tonumber(ARGV[3]) then return 0 end
if ARGV[4] ~= '' and num(mk, 'sn') + rn > tonumber(ARGV[4]) then return 0 end
return 1
"""
)

# KEYS: hold, holds set, since zset. ARGV: key. Returns the dropped {customer, month, plan, g,
# n} or nil.
_RELEASE = (
    _HELPERS
    + """
return drop(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
"""
)

# KEYS: settled, hold, holds set, month hash, since zset. ARGV: key, month, g, n, expire at
# (unix seconds).
# Returns 1 (billed) or 0 (settled already, nothing changed).
_SETTLE = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
drop(KEYS[2], KEYS[3], KEYS[5], ARGV[1])
put(KEYS[4], 'sg', num(KEYS[4], 'sg') + tonumber(ARGV[3]))
put(KEYS[4], 'sn', num(KEYS[4], 'sn') + tonumber(ARGV[4]))
redis.call('SET', KEYS[1], ARGV[2], 'EXAT', ARGV[5])
return 1
"""
)

# KEYS: month hash. ARGV: g, n.
_ADD_SPENT = (
    _HELPERS
    + """
put(KEYS[1], 'sg', num(KEYS[1], 'sg') + tonumber(ARGV[1]))
put(KEYS[1], 'sn', num(KEYS[1], 'sn') + tonumber(ARGV[2]))
return 1
"""
)

# KEYS: holds set, since zset. ARGV: cutoff, offset, limit, now, hold key prefix.
# Returns {key, customer, made at, ...} for the holds made before cutoff, oldest first.
_HOLDS_OLDER_THAN = """
if redis.call('SCARD', KEYS[1]) > redis.call('ZCARD', KEYS[2]) then
  -- holds made before P:since existed: from now on they count as made now
  for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    redis.call('ZADD', KEYS[2], 'NX', ARGV[4], name)
  end
end
local aged = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'WITHSCORES',
                        'LIMIT', ARGV[2], ARGV[3])
local out = {}
for i = 1, #aged, 2 do
  local customer = redis.call('HGET', ARGV[5] .. aged[i], 'customer')
  if customer then
    out[#out + 1] = aged[i]
    out[#out + 1] = customer
    out[#out + 1] = aged[i + 1]
  end
end
return out
"""

_DAY = 86_400


def settled_expiry(month: str, now: float) -> int:
    """Unix seconds at which a key settled in ``month`` may be forgotten: the start (UTC) of
    the month after the next, and never sooner than a day from ``now``."""
    year, number = (int(part) for part in month.split("-"))
    number += 2
    year, number = year + (number - 1) // 12, (number - 1) % 12 + 1
    start = calendar.timegm((year, number, 1, 0, 0, 0))
    return max(start, int(now) + _DAY)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _gpu(value: float) -> str:
    return repr(float(value))


def _nanos(value: int) -> str:
    return str(int(value))


def _amount(gpu: Any, nanos: Any) -> Amount:
    return Amount(float(_text(gpu)), int(float(_text(nanos))))


class RedisBudgetStore:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = redis_key("budgets"),
        owns_client: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._owns_client = owns_client
        self._clock = clock
        self._holds = f"{prefix}:holds"
        self._since = f"{prefix}:since"
        self._reserve = client.register_script(_RESERVE)
        self._charge = client.register_script(_CHARGE)
        self._release = client.register_script(_RELEASE)
        self._settle = client.register_script(_SETTLE)
        self._add_spent = client.register_script(_ADD_SPENT)
        self._holds_older_than = client.register_script(_HOLDS_OLDER_THAN)

    def _month(self, customer_id: str, month: str) -> str:
        return f"{self._prefix}:month:{len(customer_id)}:{customer_id}:{month}"

    def _hold(self, key: str) -> str:
        return f"{self._prefix}:hold:{key}"

    def _settled(self, key: str) -> str:
        return f"{self._prefix}:settled:{key}"

    async def reserve(
        self,
        key: str,
        customer_id: str,
        plan: str,
        month: str,
        amount: Amount,
        limit: BudgetLimit,
        *,
        force: bool = False,
    ) -> Reservation:
        month_key = self._month(customer_id, month)
        reply: Any = await self._reserve(
            keys=[self._hold(key), self._settled(key), month_key, self._holds, self._since],
            args=[
                key, customer_id, month, plan,
                _gpu(amount.gpu_seconds), _nanos(amount.cost_nanos),
                "1" if force else "0",
                "" if limit.gpu_seconds is None else _gpu(limit.gpu_seconds),
                "" if limit.cost_nanos is None else _nanos(limit.cost_nanos),
                repr(float(self._clock())),
            ],
        )  # fmt: skip
        outcome = _text(reply[0])
        if outcome == "held":
            customer, held_month, held_plan = (_text(part) for part in reply[1:4])
            return Reservation(key, customer, held_month, _amount(reply[4], reply[5]), held_plan)
        if outcome == "exceeded":
            committed = float(_text(reply[2]))
            if _text(reply[1]) == "gpu":
                assert limit.gpu_seconds is not None
                raise BudgetExceeded(
                    customer_id, "GPU-seconds", limit.gpu_seconds, committed, amount.gpu_seconds
                )
            assert limit.cost_nanos is not None
            raise BudgetExceeded(
                customer_id, "cost", limit.cost_nanos / NANOS, committed / NANOS,
                amount.cost_nanos / NANOS,
            )  # fmt: skip
        # "new" (now held) or "settled" (its request is over: nothing held).
        return Reservation(key, customer_id, month, amount, plan)

    async def charge(self, key: str, needed: Amount, limit: BudgetLimit) -> bool:
        reply: Any = await self._charge(
            keys=[self._hold(key)],
            args=[
                _gpu(needed.gpu_seconds), _nanos(needed.cost_nanos),
                "" if limit.gpu_seconds is None else _gpu(limit.gpu_seconds),
                "" if limit.cost_nanos is None else _nanos(limit.cost_nanos),
            ],
        )  # fmt: skip
        return int(reply) == 1

    async def release(self, key: str) -> Reservation | None:
        reply: Any = await self._release(
            keys=[self._hold(key), self._holds, self._since], args=[key]
        )
        if reply is None:
            return None
        customer, month, plan = (_text(part) for part in reply[0:3])
        return Reservation(key, customer, month, _amount(reply[3], reply[4]), plan)

    async def settle(self, key: str, customer_id: str, month: str, actual: Amount) -> bool:
        month_key = self._month(customer_id, month)
        reply: Any = await self._settle(
            keys=[self._settled(key), self._hold(key), self._holds, month_key, self._since],
            args=[
                key, month, _gpu(actual.gpu_seconds), _nanos(actual.cost_nanos),
                str(settled_expiry(month, self._clock())),
            ],
        )  # fmt: skip
        return int(reply) == 1

    async def add_spent(self, customer_id: str, month: str, amount: Amount) -> None:
        await self._add_spent(
            keys=[self._month(customer_id, month)],
            args=[_gpu(amount.gpu_seconds), _nanos(amount.cost_nanos)],
        )

    async def state(
        self, customer_id: str, plan: str, month: str, limit: BudgetLimit
    ) -> BudgetState:
        fields: list[Any] = await self._client.hmget(
            self._month(customer_id, month), ["sg", "sn", "rg", "rn"]
        )
        sg, sn, rg, rn = (b"0" if value is None else value for value in fields)
        return BudgetState(limit, _amount(sg, sn), _amount(rg, rn))

    async def open_reservations(self) -> int:
        count: Any = await self._client.scard(self._holds)
        return int(count)

    async def holds_older_than(
        self, cutoff: float, *, offset: int = 0, limit: int = 500
    ) -> list[AgedHold]:
        reply: Any = await self._holds_older_than(
            keys=[self._holds, self._since],
            args=[
                repr(float(cutoff)), str(int(offset)), str(int(limit)),
                repr(float(self._clock())), f"{self._prefix}:hold:",
            ],
        )  # fmt: skip
        return [
            AgedHold(_text(reply[i]), _text(reply[i + 1]), float(_text(reply[i + 2])))
            for i in range(0, len(reply), 3)
        ]

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

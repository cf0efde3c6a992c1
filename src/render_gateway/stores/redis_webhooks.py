"""``redis://`` webhook deliveries: durable (as the server's AOF is) and shared by every replica.

How the data lies in Redis (``ns`` is the namespace, ``render:webhooks`` by default):

* ``ns:d:<id>`` — a hash per pending delivery: ``url``, ``body`` (raw bytes), ``attempts``,
  ``next_attempt_at``, ``created_at``, ``last_error`` (times as the float's repr);
* ``ns:due`` — a sorted set of the pending ids scored by ``next_attempt_at`` (``pending`` is its
  ZCARD);
* ``ns:f:<id>`` — a hash per finished id: ``finished_at`` (the store's clock), ``delivered``
  (``1``/``0``), ``attempts``, ``detail``, with an expiry of ``keep_finished_seconds``, so Redis
  forgets old ids by itself. ``finished_at`` is also compared with the store's clock, so the
  retention is judged by that clock, as the other stores judge it.

The scripts name the per-id hashes they reach from ``ns:due`` themselves, so this is for one
Redis (or a primary with replicas), not Redis Cluster.

Every operation is one Lua script, atomic on the server: ``enqueue`` checks the finished record
and the pending set and writes the hash and its score together; ``claim_due`` picks the due
members (earliest due, then oldest, then id) and moves their score, and their hash's
``next_attempt_at``, to ``now + lease`` in the same step, so two claimers (in this process or
another replica) never get the same delivery; ``reschedule`` touches only a pending id, and
``finish`` removes the delivery and records its id together. ``now`` is always the caller's (or
the store clock's), passed in, never the server's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

from render_gateway.stores.redis_client import key
from render_gateway.stores.webhooks import KEEP_FINISHED_SECONDS, PendingDelivery, check_claim

# KEYS: due set, delivery hash, finished key. ARGV: id, url, body, now, horizon.
_ENQUEUE = """
local finished_at = redis.call('HGET', KEYS[3], 'finished_at')
if finished_at then
  if tonumber(finished_at) >= tonumber(ARGV[5]) then return 0 end
  redis.call('DEL', KEYS[3])  -- older than the retention by the store's clock: forgotten
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], 'url', ARGV[2], 'body', ARGV[3], 'attempts', '0',
           'next_attempt_at', ARGV[4], 'created_at', ARGV[4], 'last_error', '')
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 1
"""

# KEYS: due set. ARGV: hash key prefix, now, limit, leased until.
# The first ``limit`` members by score, plus every member tied with the last of them, sorted by
# (score, created_at, id): the same order as the SQLite store's index, however ties fall.
_CLAIM = """
local limit = tonumber(ARGV[3])
if limit <= 0 then return {} end
local first = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'WITHSCORES',
                         'LIMIT', 0, limit)
if #first == 0 then return {} end
local last = first[#first]
local rows = {}
local function add(id, score)
  local fields = redis.call('HMGET', ARGV[1] .. id, 'url', 'body', 'attempts', 'created_at')
  rows[#rows + 1] = {id = id, score = tonumber(score), created = tonumber(fields[4]),
                     fields = fields}
end
for i = 1, #first, 2 do
  if tonumber(first[i + 1]) < tonumber(last) then add(first[i], first[i + 1]) end
end
local tied = redis.call('ZRANGEBYSCORE', KEYS[1], last, last)
for _, id in ipairs(tied) do add(id, last) end
table.sort(rows, function(a, b)
  if a.score ~= b.score then return a.score < b.score end
  if a.created ~= b.created then return a.created < b.created end
  return a.id < b.id
end)
local claimed = {}
for i = 1, math.min(limit, #rows) do
  local row = rows[i]
  redis.call('ZADD', KEYS[1], 'XX', ARGV[4], row.id)
  redis.call('HSET', ARGV[1] .. row.id, 'next_attempt_at', ARGV[4])
  claimed[i] = {row.id, row.fields[1], row.fields[2], row.fields[3], row.fields[4]}
end
return claimed
"""

# KEYS: due set, delivery hash. ARGV: id, attempts, next attempt at, last error.
_RESCHEDULE = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'attempts', ARGV[2], 'next_attempt_at', ARGV[3],
           'last_error', ARGV[4])
return 1
"""

# KEYS: due set, delivery hash, finished key.
# ARGV: id, finished at, delivered, attempts, detail, expiry in ms (0: none).
_FINISH = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[3], 'finished_at', ARGV[2], 'delivered', ARGV[3], 'attempts', ARGV[4],
           'detail', ARGV[5])
if tonumber(ARGV[6]) > 0 then redis.call('PEXPIRE', KEYS[3], ARGV[6]) end
return 1
"""


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    raise TypeError(f"unexpected reply from Redis: {value!r}")


class RedisWebhookDeliveries:
    def __init__(
        self,
        client: aioredis.Redis,
        clock: Callable[[], float] = time.time,
        keep_finished_seconds: float = KEEP_FINISHED_SECONDS,
        namespace: str = key("webhooks"),
    ) -> None:
        self._client, self._clock, self._keep_finished = client, clock, keep_finished_seconds
        self._ns = namespace
        self._due = f"{namespace}:due"
        self._enqueue = client.register_script(_ENQUEUE)
        self._claim = client.register_script(_CLAIM)
        self._reschedule = client.register_script(_RESCHEDULE)
        self._finish = client.register_script(_FINISH)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the webhook store is closed")

    def _delivery(self, delivery_id: str) -> str:
        return f"{self._ns}:d:{delivery_id}"

    def _finished(self, delivery_id: str) -> str:
        return f"{self._ns}:f:{delivery_id}"

    async def enqueue(self, delivery_id: str, url: str, body: bytes, now: float) -> bool:
        self._check_open()
        horizon = self._clock() - self._keep_finished
        added = await self._enqueue(
            keys=[self._due, self._delivery(delivery_id), self._finished(delivery_id)],
            args=[delivery_id, url, body, repr(float(now)), repr(float(horizon))],
        )
        return int(added) == 1

    async def claim_due(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[PendingDelivery]:
        check_claim(limit, lease_seconds)
        self._check_open()
        leased_until = now + lease_seconds
        rows = await self._claim(
            keys=[self._due],
            args=[f"{self._ns}:d:", repr(float(now)), int(limit), repr(float(leased_until))],
        )
        return [self._row_to_delivery(row, leased_until) for row in rows]

    @staticmethod
    def _row_to_delivery(row: Sequence[object], leased_until: float) -> PendingDelivery:
        delivery_id, url, body, attempts, created_at = row
        if not isinstance(body, bytes):
            raise TypeError(f"unexpected reply from Redis: {body!r}")
        return PendingDelivery(
            _text(delivery_id),
            _text(url),
            body,
            int(_text(attempts)),
            leased_until,
            float(_text(created_at)),
        )

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, last_error: str
    ) -> None:
        self._check_open()
        await self._reschedule(
            keys=[self._due, self._delivery(delivery_id)],
            args=[delivery_id, int(attempts), repr(float(next_attempt_at)), last_error],
        )

    async def finish(self, delivery_id: str, delivered: bool, attempts: int, detail: str) -> None:
        self._check_open()
        keep = self._keep_finished
        expiry_ms = max(1, math.ceil(keep * 1000)) if math.isfinite(keep) else 0
        await self._finish(
            keys=[self._due, self._delivery(delivery_id), self._finished(delivery_id)],
            args=[
                delivery_id,
                repr(float(self._clock())),
                int(delivered),
                int(attempts),
                detail,
                expiry_ms,
            ],
        )

    async def pending(self) -> int:
        self._check_open()
        return int(await self._client.zcard(self._due))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.aclose()

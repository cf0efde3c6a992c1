"""``redis://`` usage stream: the outbox of every replica's finished requests, on the shared Redis.

How the data lies in Redis (``ns`` is the namespace, ``render:usage`` by default):

* ``ns`` — a Redis Stream, one entry per record, with the entry id ``<seq>-0`` (so ids are the
  sequence numbers and a group's read is one ``XRANGE`` from its position) and the fields
  ``record`` (``UsageRecord.to_dict()`` as JSON without the signed claim, as the SQLite stream
  keeps it), ``claim`` (only when the record has one) and ``ts`` (the record's timestamp);
* ``ns:seq`` — a counter: the last sequence number handed out (the head);
* ``ns:event_ids`` — a sorted set of the recent appended event ids, scored by the record's
  timestamp (each record is appended at most once): kept ``EVENT_IDS_KEPT_S`` (7 days), far
  longer than a duplicate append can come (a retried script or a re-finished job, within
  seconds or an outage's minutes), then forgotten by the trim, so it does not grow forever;
* ``ns:events`` — the set every event id went into before the sorted set (streams written by
  an older gateway): still checked, and moved into the sorted set (scored at the trim's time)
  a batch per trim, after which it is gone;
* ``ns:acked`` — a hash: consumer group → the highest sequence number it acked;
* ``ns:month:<YYYY-MM>`` — a hash of billable usage per customer: ``gpu:<customer>`` (float
  gpu-seconds, HINCRBYFLOAT) and ``nanos:<customer>`` (integer cost, HINCRBY).

Trimming (``trim_acked``, every minute from the metering role): one script reads the known
groups' positions from ``ns:acked``, ``XTRIM MINID``s the stream past the lowest (everything
every group acked; a group that never acked holds everything), and forgets the event ids older
than the dedupe window. ``ns:seq`` is never touched, so the head and the next sequence
numbers go on increasing (XADD's ids stay above the stream's last id, which a trim keeps); the
month totals are their own hashes, so ``month_usage`` does not read the entries.

Atomicity: an append is one Lua script — the event-id check, the INCR, the XADD, the event id
and the month totals together — and the job store's ``finish`` runs the same steps inside its
own script (``APPEND_LUA``), so a record exists if and only if its request ended. An ack is a
script too (read the position, raise it, never lower it). Reads need none: entries never change
and a group's position only moves forward, so the position read before a range is never stale
in a way that loses an entry (an entry read twice is the contract: re-read until acked).

The consumers are threads calling the blocking methods, so those use a synchronous
``redis.Redis``; appends and ``month_usage`` run on the event loop with the asyncio client.
Keys are built inside the scripts from the namespace passed in ARGV (one Redis, not a cluster),
as the other Redis stores do.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from render_gateway.core.months import month_of
from render_gateway.core.usage_records import UsageRecord
from render_gateway.stores.redis_client import (
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    SYNC_RETRY,
    GuardedSyncRedis,
    client_password,
    key,
)
from render_gateway.stores.usage_log import (
    USAGE_GROUPS,
    LoggedUsage,
    MonthUsage,
    UsageAlreadyLogged,
)

# Lua helpers shared with the job store's finish script. ``u`` is the namespace; ``a`` the index
# in ARGV of the 10 usage arguments (see ``usage_args``).
APPEND_LUA = """
local function usage_known(u, a)
  return redis.call('ZSCORE', u .. ':event_ids', ARGV[a]) ~= false
    or redis.call('SISMEMBER', u .. ':events', ARGV[a]) == 1
end
local function usage_write(u, a)
  local seq = redis.call('INCR', u .. ':seq')
  redis.call('ZADD', u .. ':event_ids', ARGV[a + 9], ARGV[a])
  local id = string.format('%d-0', seq)
  if ARGV[a + 7] == '1' then
    redis.call('XADD', u, id, 'record', ARGV[a + 6], 'ts', ARGV[a + 9], 'claim', ARGV[a + 8])
  else
    redis.call('XADD', u, id, 'record', ARGV[a + 6], 'ts', ARGV[a + 9])
  end
  if ARGV[a + 3] == '1' then
    local month = u .. ':month:' .. ARGV[a + 1]
    redis.call('HINCRBYFLOAT', month, 'gpu:' .. ARGV[a + 2], ARGV[a + 4])
    redis.call('HINCRBY', month, 'nanos:' .. ARGV[a + 2], ARGV[a + 5])
  end
  return seq
end
"""

_APPEND = (
    APPEND_LUA
    + """
if usage_known(ARGV[1], 2) then return false end
return usage_write(ARGV[1], 2)
"""
)

_READ = """
local position = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
return redis.call('XRANGE', KEYS[1], string.format('%d-0', position + 1), '+', 'COUNT', ARGV[2])
"""

_ACK = """
local position = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > position then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""

_LAG = """
local position = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local head = tonumber(redis.call('GET', KEYS[3]) or '0')
local waiting = head - position
if waiting <= 0 then return {0, false} end
local first = redis.call('XRANGE', KEYS[1], string.format('%d-0', position + 1), '+', 'COUNT', 1)
if #first == 0 then return {waiting, false} end  -- a group trim_acked was not told of
local fields = first[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 'ts' then return {waiting, fields[i + 1]} end
end
return {waiting, false}
"""

# How long an appended event id is remembered (a duplicate append is refused meanwhile).
EVENT_IDS_KEPT_S = 7 * 86400.0
# The old set's ids moved per trim: a few milliseconds of Redis each, a million in 100 trims.
LEGACY_EVENT_IDS_PER_TRIM = 10_000

# ARGV: namespace, now, how long event ids are kept (seconds), the groups. Entries up to the
# lowest position go; so do event ids older than the window, and a batch of the old set's ids
# moves into the sorted set (scored now: they are kept a full window from the first trim).
_TRIM = """
local u = ARGV[1]
local now = tonumber(ARGV[2])
local lowest = nil
for i = 4, #ARGV do
  local position = tonumber(redis.call('HGET', u .. ':acked', ARGV[i]) or '0')
  if lowest == nil or position < lowest then lowest = position end
end
local trimmed = 0
if lowest ~= nil and lowest > 0 then
  trimmed = redis.call('XTRIM', u, 'MINID', string.format('%d-0', lowest + 1))
end
local moved = redis.call('SPOP', u .. ':events', LEGACY_BATCH)
for _, event_id in ipairs(moved) do
  redis.call('ZADD', u .. ':event_ids', 'NX', ARGV[2], event_id)
end
local forget_before = string.format('(%.6f', now - tonumber(ARGV[3]))
redis.call('ZREMRANGEBYSCORE', u .. ':event_ids', '-inf', forget_before)
return trimmed
""".replace("LEGACY_BATCH", str(LEGACY_EVENT_IDS_PER_TRIM))


def usage_args(record: UsageRecord) -> list[str | bytes]:
    """The 10 ARGV values ``APPEND_LUA`` reads for one record."""
    fields = record.to_dict()
    claim = fields.pop("usage_claim")
    return [
        record.event_id,
        month_of(record.timestamp),
        record.customer_id,
        "1" if record.billable else "0",
        repr(record.gpu_seconds if record.billable else 0.0),
        str(record.cost_nanos),
        orjson.dumps(fields),
        "0" if claim is None else "1",
        "" if claim is None else str(claim),
        repr(record.timestamp),
    ]


def already_logged(record: UsageRecord) -> UsageAlreadyLogged:
    return UsageAlreadyLogged(f"usage record {record.event_id} is in the stream already")


def open_sync_redis(url: str) -> redis.Redis:
    """A blocking client for the consumer threads (bytes in, bytes out; thread-safe pool)."""
    client: redis.Redis = GuardedSyncRedis.from_url(
        url,
        password=client_password(),
        decode_responses=False,
        health_check_interval=30,
        # The same bounds as the asyncio clients: a silent Redis stalls a consumer thread for
        # seconds, not forever (the threads log the error and retry: metering/writer.py).
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=READ_TIMEOUT_S,
        retry=SYNC_RETRY,
    )
    return client


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise TypeError(f"unexpected reply from Redis: {value!r}")


def _entries(reply: Any) -> list[tuple[int, dict[bytes, bytes]]]:
    """XRANGE's ``[[b'<seq>-0', [field, value, ...]], ...]`` (the raw script reply)."""
    entries = []
    for entry_id, flat in reply:
        seq = int(_text(entry_id).split("-", 1)[0])
        entries.append((seq, dict(zip(flat[::2], flat[1::2], strict=True))))
    return entries


class RedisUsageStream:
    def __init__(
        self, client: aioredis.Redis, sync_client: redis.Redis, namespace: str = key("usage")
    ) -> None:
        self._client, self._sync, self.namespace = client, sync_client, namespace
        self._append = client.register_script(_APPEND)
        self._read = sync_client.register_script(_READ)
        self._ack = sync_client.register_script(_ACK)
        self._lag = sync_client.register_script(_LAG)
        self._trim = sync_client.register_script(_TRIM)

    async def append_usage(self, record: UsageRecord) -> int:
        seq = await self._append(keys=[], args=[self.namespace, *usage_args(record)])
        if seq is None:
            raise already_logged(record)
        return int(seq)

    def _range(self, group: str, count: int) -> list[tuple[int, dict[bytes, bytes]]]:
        if count <= 0:
            return []
        reply = self._read(keys=[self.namespace, f"{self.namespace}:acked"], args=[group, count])
        return _entries(reply)

    def read_group(self, group: str, count: int) -> list[LoggedUsage]:
        read = []
        for seq, fields in self._range(group, count):
            record: dict[str, Any] = orjson.loads(fields[b"record"])
            claim = fields.get(b"claim")
            record["usage_claim"] = None if claim is None else _text(claim)
            read.append(LoggedUsage(seq, record))
        return read

    def read_group_json(self, group: str, count: int) -> tuple[list[int], list[bytes]]:
        chosen = self._range(group, count)
        return [seq for seq, _ in chosen], [fields[b"record"] for _, fields in chosen]

    def read_group_raw(
        self, group: str, count: int
    ) -> tuple[list[int], list[bytes], list[str | None]]:
        chosen = self._range(group, count)
        claims = [fields.get(b"claim") for _, fields in chosen]
        return (
            [seq for seq, _ in chosen],
            [fields[b"record"] for _, fields in chosen],
            [None if claim is None else _text(claim) for claim in claims],
        )

    def ack(self, group: str, seq: int) -> None:
        # appendfsync decides durability on the server; the reply comes after the write.
        self._ack(keys=[f"{self.namespace}:acked"], args=[group, int(seq)])

    def acked(self, group: str) -> int:
        position = self._sync.hget(f"{self.namespace}:acked", group)
        return 0 if position is None else int(_text(position))

    def head(self) -> int:
        head = self._sync.get(f"{self.namespace}:seq")
        return 0 if head is None else int(_text(head))

    def lag(self, group: str) -> tuple[int, float | None]:
        ns = self.namespace
        waiting, oldest = self._lag(keys=[ns, f"{ns}:acked", f"{ns}:seq"], args=[group])
        return int(waiting), None if oldest is None else float(_text(oldest))

    async def month_usage(self, month: str) -> list[MonthUsage]:
        raw: dict[Any, Any] = await self._client.hgetall(f"{self.namespace}:month:{month}")
        gpu: dict[str, float] = {}
        nanos: dict[str, int] = {}
        for name, value in raw.items():
            kind, customer = _text(name).split(":", 1)
            if kind == "gpu":
                gpu[customer] = float(_text(value))
            else:
                nanos[customer] = int(_text(value))
        return [MonthUsage(c, gpu[c], nanos.get(c, 0)) for c in gpu]

    def trim_acked(
        self,
        groups: Sequence[str] = USAGE_GROUPS,
        *,
        now: float | None = None,
        event_ids_kept_s: float = EVENT_IDS_KEPT_S,
    ) -> int:
        """See ``UsageStream.trim_acked``; event ids go once older than ``event_ids_kept_s``
        by ``now`` (the gateway's clock, as the other Redis stores take it)."""
        if not groups:
            raise ValueError("trim_acked needs the groups whose acks allow a trim")
        at = time.time() if now is None else now
        args = [self.namespace, repr(at), repr(float(event_ids_kept_s)), *groups]
        return int(self._trim(keys=[], args=args))

    def close_sync(self) -> None:
        self._sync.close()

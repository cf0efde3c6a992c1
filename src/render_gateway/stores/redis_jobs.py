"""``redis://`` job store: the jobs, the priority queue and the run leases of every replica, on
one shared Redis.

How the data lies in Redis (``ns`` is the namespace, ``render:jobs`` by default):

* ``ns:job:<id>`` — a hash per job: ``static`` (JSON of the fields set at admission: id,
  customer, lane, request, created_at, idempotency key, request digest, expires_at, webhook),
  and the fields that change, each on its own: ``status``, ``started_at``, ``completed_at``
  (floats as their repr: they round-trip exactly; absent for None), ``retries``, ``seed``,
  ``outputs``/``error``/``extra`` (JSON), ``cancel`` ("1" once a cancel was requested),
  ``holder`` and ``lease_until`` (while running), and what the scripts route and count by:
  ``seq`` (the admission number), ``lane``, ``customer``, ``route`` (``route_key(request)``),
  ``digest`` and ``version`` (raised whenever ``extra`` changes);
* ``ns:seq`` — the admission counter (INCR);
* ``ns:lane:high|normal|low`` — a sorted set per lane of the queued job ids, scored by ``seq``:
  a job's position is its ZRANK plus the ZCARD of the lanes ahead (exact, O(log n)), and a
  requeued job goes back with its own score, ahead of the jobs admitted after it;
* ``ns:queued`` — a hash of queued counts: ``total`` and ``c:<customer>``;
* ``ns:unsettled`` — a sorted set (score ``seq``) of the jobs queued or running;
* ``ns:unfollowed`` — a sorted set (score ``completed_at``) of the jobs ``finish`` ended whose
  follow-ups ``followed_up`` has not confirmed;
* ``ns:ttl`` — a sorted set of the queued jobs that have a ttl, scored by ``expires_at``;
* ``ns:leases`` — a sorted set of the running jobs, scored by ``lease_until``;
* ``ns:idempotency`` — a hash ``<len(customer)>:<customer>:<key>`` → job id (the request
  digest is the job's ``digest``);
* ``ns:listed:<len(modality)>:<modality>:<customer>`` — a sorted set (score ``seq``) of a
  customer's jobs of one modality, whatever their status (``listed``). Jobs admitted by a build
  before it are in none;
* ``ns:by-customer:<customer>`` and ``ns:all`` — sorted sets (score ``seq``) of a customer's
  jobs of every modality and of every customer's jobs (``listed`` without a modality, or for an
  admin). Jobs admitted by a build before them are in neither.

Atomicity: every operation that reads and then writes is one Lua script, so it runs whole on
the server with nothing in between: ``submit`` (idempotency look-up, both depth limits, the
enqueue), ``claim`` (the head of the highest non-empty lane, its route, the move to running),
``heartbeat``, ``request_cancel``, ``finish`` (the expected status, leaving the queue or the
lease, and the usage record's XADD into the usage stream in the SAME script: a record exists
iff its request ended), ``requeue``; the reads are scripts too, for one consistent snapshot.
The one thing a script cannot do exactly is the JSON merge patch of ``extra`` (Redis's cjson
rounds floats to 14 digits and turns ``[]`` into ``{}``): it is computed in Python from the
``extra`` and ``version`` read, and the script writes it only if ``version`` is still the one
read — a compare-and-set, as WATCH/MULTI would be; on a mismatch the call reads again.
Keys are built inside the scripts from the namespace in ARGV (one Redis, not a cluster), as
the other Redis stores do.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from render_gateway.core.jobs import Job, JobError, JobStatus, route_key
from render_gateway.core.lanes import Lane
from render_gateway.core.usage_records import UsageRecord
from render_gateway.stores.jobs import (
    CancelResult,
    IdempotencyConflict,
    JobFilter,
    LaneSnapshot,
    Opened,
    QueueFull,
    QueueSnapshot,
    check_finish,
    merge_patch,
)
from render_gateway.stores.redis_client import key
from render_gateway.stores.redis_client import open_redis as _open_async
from render_gateway.stores.redis_usage_log import (
    APPEND_LUA,
    RedisUsageStream,
    already_logged,
    open_sync_redis,
    usage_args,
)
from render_gateway.stores.unavailable import StoreUnavailable

LANES = tuple(lane.name for lane in sorted(Lane))  # high, normal, low: strict priority order
LIST_CHUNK = 100  # jobs one listing script looks at

# Shared helpers: ``ns`` is ARGV[1] in every script.
_COMMON = """
local ns = ARGV[1]
local LANES = {'high', 'normal', 'low'}
local function jkey(id) return ns .. ':job:' .. id end
local function count_queued(customer, delta)
  local q = ns .. ':queued'
  if redis.call('HINCRBY', q, 'c:' .. customer, delta) <= 0 then
    redis.call('HDEL', q, 'c:' .. customer)
  end
  redis.call('HINCRBY', q, 'total', delta)
end
local function leave_queue(id, j)
  redis.call('ZREM', ns .. ':lane:' .. redis.call('HGET', j, 'lane'), id)
  redis.call('ZREM', ns .. ':ttl', id)
  count_queued(redis.call('HGET', j, 'customer'), -1)
end
"""

_SUBMIT = (
    _COMMON
    + """
-- ARGV: ns, id, customer, lane, idempotency field or '', max customer, max total, expires_at
-- or '', listing or '' (no modality), then the job hash's field/value pairs
local id, customer, lane, idem = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
-- The same submit run again (its reply was lost with the connection and the client retried;
-- ids are random, so no other submit has this one): created once, counted once.
if redis.call('EXISTS', jkey(id)) == 1 then return {'created', redis.call('HGETALL', jkey(id))} end
if idem ~= '' then
  local existing = redis.call('HGET', ns .. ':idempotency', idem)
  if existing then return {'existing', redis.call('HGETALL', jkey(existing))} end
end
local q = ns .. ':queued'
if tonumber(redis.call('HGET', q, 'c:' .. customer) or '0') >= tonumber(ARGV[6]) then
  return {'full', 'customer'}
end
if tonumber(redis.call('HGET', q, 'total') or '0') >= tonumber(ARGV[7]) then
  return {'full', 'total'}
end
local seq = redis.call('INCR', ns .. ':seq')
local j = jkey(id)
redis.call('HSET', j, unpack(ARGV, 10))
redis.call('HSET', j, 'seq', seq)
redis.call('ZADD', ns .. ':lane:' .. lane, seq, id)
redis.call('ZADD', ns .. ':unsettled', seq, id)
if ARGV[8] ~= '' then redis.call('ZADD', ns .. ':ttl', ARGV[8], id) end
if idem ~= '' then redis.call('HSET', ns .. ':idempotency', idem, id) end
if ARGV[9] ~= '' then redis.call('ZADD', ns .. ':listed:' .. ARGV[9], seq, id) end
redis.call('ZADD', ns .. ':by-customer:' .. customer, seq, id)
redis.call('ZADD', ns .. ':all', seq, id)
count_queued(customer, 1)
return {'created', redis.call('HGETALL', j)}
"""
)

_POSITION = (
    _COMMON
    + """
local lane = redis.call('HGET', jkey(ARGV[2]), 'lane')
if not lane then return false end
local rank = redis.call('ZRANK', ns .. ':lane:' .. lane, ARGV[2])
if not rank then return false end
for _, ahead in ipairs(LANES) do
  if ahead == lane then break end
  rank = rank + redis.call('ZCARD', ns .. ':lane:' .. ahead)
end
return rank
"""
)

_DEPTH = (
    _COMMON
    + """
local depth = {}
for i, lane in ipairs(LANES) do depth[i] = redis.call('ZCARD', ns .. ':lane:' .. lane) end
return depth
"""
)

_QUEUE_SNAPSHOT = (
    _COMMON
    + """
-- Per lane its depth and its head's static JSON (false when empty), then the running count.
local out = {}
for _, lane in ipairs(LANES) do
  local set = ns .. ':lane:' .. lane
  out[#out + 1] = redis.call('ZCARD', set)
  local head = redis.call('ZRANGE', set, 0, 0)[1]
  out[#out + 1] = head and redis.call('HGET', jkey(head), 'static') or false
end
out[#out + 1] = redis.call('ZCARD', ns .. ':leases')
return out
"""
)

_CLAIM = (
    _COMMON
    + """
-- ARGV: ns, now, holder, lease_until, number of runnable routes, runnable..., served...
local runnable, served = {}, {}
local n = tonumber(ARGV[5])
for i = 6, 5 + n do runnable[ARGV[i]] = true end
for i = 6 + n, #ARGV do served[ARGV[i]] = true end
for _, lane in ipairs(LANES) do
  local head = redis.call('ZRANGE', ns .. ':lane:' .. lane, 0, 0)[1]
  if head then
    local j = jkey(head)
    local route = redis.call('HGET', j, 'route')
    if not runnable[route] and served[route] then return false end
    leave_queue(head, j)
    redis.call('HSET', j, 'status', 'running', 'started_at', ARGV[2], 'holder', ARGV[3],
               'lease_until', ARGV[4])
    redis.call('ZADD', ns .. ':leases', ARGV[4], head)
    return redis.call('HGETALL', j)
  end
end
return false
"""
)

_HEARTBEAT = (
    _COMMON
    + """
-- ARGV: ns, holder, now, lease_until, ids...
local now, held = tonumber(ARGV[3]), {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local j = jkey(id)
  local until_ = redis.call('ZSCORE', ns .. ':leases', id)
  if until_ and tonumber(until_) >= now and redis.call('HGET', j, 'holder') == ARGV[2] then
    redis.call('ZADD', ns .. ':leases', ARGV[4], id)
    redis.call('HSET', j, 'lease_until', ARGV[4])
    held[#held + 1] = id
  end
end
return held
"""
)

# Jobs by id, each as its hash (HGETALL); the ids come from a sorted set range.
_GET_MANY = (
    _COMMON
    + """
local out = {}
for i = 2, #ARGV do out[#out + 1] = redis.call('HGETALL', jkey(ARGV[i])) end
return out
"""
)

_EXPIRED_RUNS = (
    _COMMON
    + """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', ns .. ':leases', '-inf', '(' .. ARGV[2])) do
  out[#out + 1] = redis.call('HGETALL', jkey(id))
end
return out
"""
)

_UNFOLLOWED = (
    _COMMON
    + """
-- ARGV: ns, ended before (exclusive), limit
local out = {}
local ended = redis.call('ZRANGEBYSCORE', ns .. ':unfollowed', '-inf', '(' .. ARGV[2],
                         'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ended) do
  local flat = redis.call('HGETALL', jkey(id))
  if #flat > 0 then out[#out + 1] = flat else redis.call('ZREM', ns .. ':unfollowed', id) end
end
return out
"""
)

_EXPIRED_QUEUED = (
    _COMMON
    + """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', ns .. ':ttl', '-inf', ARGV[2])) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', jkey(id), 'seq')
end
return out
"""
)

_UNSETTLED = (
    _COMMON
    + """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', ns .. ':unsettled', 0, -1)) do
  out[#out + 1] = redis.call('HGETALL', jkey(id))
end
return out
"""
)

_LISTED = (
    _COMMON
    + """
-- One chunk of a listing: ARGV: ns, set (after ns), after id or '', chunk size, 'desc' or
-- 'asc', status or '' (the one filter checked here: the rest are checked by the caller).
-- Returns {the chunk's job hashes of that status, the last id looked at or '' at the end};
-- false when ``after`` is not in the set.
local set, after, chunk = ns .. ':' .. ARGV[2], ARGV[3], tonumber(ARGV[4])
local desc, status = ARGV[5] == 'desc', ARGV[6]
local ids
if after == '' then
  if desc then ids = redis.call('ZREVRANGE', set, 0, chunk - 1)
  else ids = redis.call('ZRANGE', set, 0, chunk - 1) end
else
  local score = redis.call('ZSCORE', set, after)
  if not score then return false end
  if desc then
    ids = redis.call('ZREVRANGEBYSCORE', set, '(' .. score, '-inf', 'LIMIT', 0, chunk)
  else
    ids = redis.call('ZRANGEBYSCORE', set, '(' .. score, '+inf', 'LIMIT', 0, chunk)
  end
end
local out = {}
for _, id in ipairs(ids) do
  local j = jkey(id)
  if status == '' or redis.call('HGET', j, 'status') == status then
    local flat = redis.call('HGETALL', j)
    if #flat > 0 then out[#out + 1] = flat end
  end
end
local last = ''
if #ids == chunk then last = ids[#ids] end
return {out, last}
"""
)

_REQUEST_CANCEL = (
    _COMMON
    + """
local j = jkey(ARGV[2])
local fields = redis.call('HMGET', j, 'status', 'customer')
if not fields[1] or fields[2] ~= ARGV[3] then return 'not_found' end
if fields[1] ~= 'queued' and fields[1] ~= 'running' then return 'terminal' end
redis.call('HSET', j, 'cancel', '1')
return fields[1]
"""
)

_FINISH = (
    _COMMON
    + APPEND_LUA
    + """
-- ARGV: ns, id, status, now, expect (comma-joined), outputs JSON, error JSON or '', seed or '',
-- version read or '' (no extra), merged extra JSON, usage namespace or '' (no record), then
-- the 10 usage arguments, then the holder that must hold the run or '' (no fence)
local id = ARGV[2]
local j = jkey(id)
local status = redis.call('HGET', j, 'status')
if not status then return {'missing'} end
if not string.find(',' .. ARGV[5] .. ',', ',' .. status .. ',', 1, true) then return {'skip'} end
if status == 'running' and ARGV[22] ~= '' and redis.call('HGET', j, 'holder') ~= ARGV[22] then
  return {'skip'}  -- a late result of a run that another holder took over
end
if ARGV[9] ~= '' and redis.call('HGET', j, 'version') ~= ARGV[9] then return {'retry'} end
local u = ARGV[11]
if u ~= '' and usage_known(u, 12) then return {'logged'} end
if status == 'queued' then
  leave_queue(id, j)
else
  redis.call('ZREM', ns .. ':leases', id)
  redis.call('HDEL', j, 'holder', 'lease_until')
end
redis.call('ZREM', ns .. ':unsettled', id)
redis.call('ZADD', ns .. ':unfollowed', ARGV[4], id)
redis.call('HSET', j, 'status', ARGV[3], 'completed_at', ARGV[4], 'outputs', ARGV[6])
if ARGV[7] ~= '' then redis.call('HSET', j, 'error', ARGV[7])
else redis.call('HDEL', j, 'error') end
if ARGV[8] ~= '' then redis.call('HSET', j, 'seed', ARGV[8]) end
if ARGV[9] ~= '' then
  redis.call('HSET', j, 'extra', ARGV[10])
  redis.call('HINCRBY', j, 'version', 1)
end
if u ~= '' then usage_write(u, 12) end
return {'ok', redis.call('HGETALL', j)}
"""
)

_REQUEUE = (
    _COMMON
    + """
-- ARGV: ns, id, retries to add, version read or '' (no extra), merged extra JSON, the holder
-- that must hold the run or '' (no fence)
local id = ARGV[2]
local j = jkey(id)
if redis.call('HGET', j, 'status') ~= 'running' then return {'skip'} end
if ARGV[6] ~= '' and redis.call('HGET', j, 'holder') ~= ARGV[6] then return {'skip'} end
if ARGV[4] ~= '' and redis.call('HGET', j, 'version') ~= ARGV[4] then return {'retry'} end
redis.call('ZREM', ns .. ':leases', id)
redis.call('HDEL', j, 'holder', 'lease_until', 'started_at')
redis.call('HSET', j, 'status', 'queued')
redis.call('HINCRBY', j, 'retries', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', j, 'extra', ARGV[5])
  redis.call('HINCRBY', j, 'version', 1)
end
local fields = redis.call('HMGET', j, 'lane', 'seq', 'expires_at', 'customer')
redis.call('ZADD', ns .. ':lane:' .. fields[1], fields[2], id)
if fields[3] then redis.call('ZADD', ns .. ':ttl', fields[3], id) end
count_queued(fields[4], 1)
return {'ok', redis.call('HGETALL', j)}
"""
)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise TypeError(f"unexpected reply from Redis: {value!r}")


def _optional_float(value: float | None) -> str | None:
    return None if value is None else repr(float(value))


def _error_json(error: JobError | None) -> str:
    if error is None:
        return ""
    fields = {"code": error.code, "message": error.message, "retriable": error.retriable}
    return orjson.dumps(fields).decode()


def _idempotency_field(customer_id: str, idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return ""
    return f"{len(customer_id)}:{customer_id}:{idempotency_key}"


def _listing(customer_id: str, modality: object) -> str:
    """The suffix of a customer's listing key for one modality ('' for none: not listed)."""
    if not isinstance(modality, str):
        return ""
    return f"{len(modality)}:{modality}:{customer_id}"


def _job_fields(job: Job) -> list[str]:
    """The job's hash as field/value pairs (absent fields are None)."""
    static = {
        "id": job.id,
        "customer_id": job.customer_id,
        "lane": job.lane.name,
        "request": job.request,
        "created_at": job.created_at,
        "idempotency_key": job.idempotency_key,
        "request_digest": job.request_digest,
        "expires_at": job.expires_at,
        "webhook": job.webhook,
    }
    fields: dict[str, str | None] = {
        "static": orjson.dumps(static).decode(),
        "status": job.status.value,
        "started_at": _optional_float(job.started_at),
        "completed_at": _optional_float(job.completed_at),
        "retries": str(job.retries),
        "seed": None if job.seed is None else str(job.seed),
        "outputs": orjson.dumps(list(job.outputs)).decode(),
        "error": _error_json(job.error) or None,
        "extra": orjson.dumps(job.extra).decode(),
        "cancel": "1" if job.cancel_requested else None,
        "lane": job.lane.name,
        "customer": job.customer_id,
        "route": route_key(job.request),
        "expires_at": _optional_float(job.expires_at),
        "version": "0",
    }
    pairs: list[str] = []
    for name, value in fields.items():
        if value is not None:
            pairs += [name, value]
    return pairs


def _hash(flat: Sequence[Any]) -> dict[str, bytes]:
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def _to_job(flat: Sequence[Any]) -> Job:
    fields = _hash(flat)
    static = orjson.loads(fields["static"])

    def opt_float(name: str) -> float | None:
        value = fields.get(name)
        return None if value is None else float(_text(value))

    error_fields = orjson.loads(fields["error"]) if "error" in fields else None
    return Job(
        id=static["id"],
        customer_id=static["customer_id"],
        lane=Lane[static["lane"]],
        request=static["request"],
        created_at=static["created_at"],
        status=JobStatus(_text(fields["status"])),
        started_at=opt_float("started_at"),
        completed_at=opt_float("completed_at"),
        retries=int(_text(fields["retries"])),
        seed=int(_text(fields["seed"])) if "seed" in fields else None,
        outputs=tuple(orjson.loads(fields["outputs"])),
        error=JobError(**error_fields) if error_fields else None,
        idempotency_key=static["idempotency_key"],
        request_digest=static["request_digest"],
        expires_at=static["expires_at"],
        webhook=static["webhook"],
        extra=orjson.loads(fields["extra"]),
        cancel_requested="cancel" in fields,
        run_holder=_text(fields["holder"]) if "holder" in fields else None,
    )


@dataclass(frozen=True)
class ReplicaWait:
    """Redis ``WAIT``: an admission or an end is acknowledged only once ``replicas`` Redis
    replicas have it too, waiting at most ``timeout_ms``. Fewer in time: StoreUnavailable —
    the write is on the primary (the job exists and will run), but not as durable as asked, so
    the caller is told it was not accepted (a resubmit with the same Idempotency-Key is safe)."""

    replicas: int
    timeout_ms: int = 1000


class RedisJobStore:
    def __init__(
        self,
        client: aioredis.Redis,
        usage_log: RedisUsageStream,
        namespace: str = key("jobs"),
        wait: ReplicaWait | None = None,
    ) -> None:
        self._client, self._ns, self._wait = client, namespace, wait
        self._usage = usage_log
        self._closed = False
        script = client.register_script
        self._submit, self._position, self._depth = (
            script(_SUBMIT), script(_POSITION), script(_DEPTH)
        )  # fmt: skip
        self._claim, self._heartbeat = script(_CLAIM), script(_HEARTBEAT)
        self._get_many, self._expired_runs = script(_GET_MANY), script(_EXPIRED_RUNS)
        self._expired_queued, self._unsettled = script(_EXPIRED_QUEUED), script(_UNSETTLED)
        self._request_cancel, self._finish = script(_REQUEST_CANCEL), script(_FINISH)
        self._requeue, self._unfollowed = script(_REQUEUE), script(_UNFOLLOWED)
        self._listed, self._queue_snapshot = script(_LISTED), script(_QUEUE_SNAPSHOT)

    @property
    def usage_log(self) -> RedisUsageStream:
        return self._usage

    async def open(self) -> Opened:
        # Shared: a dead replica's runs are found by their lapsed leases (expired_runs), not here.
        total = await self._client.hget(f"{self._ns}:queued", "total")
        return Opened((), 0 if total is None else int(_text(total)))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.aclose()
            self._usage.close_sync()

    async def _run(self, script: Any, *args: Any) -> Any:
        if self._closed:
            raise RuntimeError("the job store is closed")
        return await script(keys=[], args=[self._ns, *args])

    async def _run_replicated(self, script: Any, *args: Any) -> tuple[Any, int | None]:
        """``_run`` followed by ``WAIT`` on the same connection (WAIT counts the replicas that
        have this connection's writes, so both go in one pipeline): (reply, replicas that
        acknowledged), or (reply, None) without a ReplicaWait."""
        if self._wait is None:
            return await self._run(script, *args), None
        if self._closed:
            raise RuntimeError("the job store is closed")
        async with self._client.pipeline(transaction=False) as pipe:
            await script(keys=[], args=[self._ns, *args], client=pipe)
            pipe.execute_command("WAIT", self._wait.replicas, self._wait.timeout_ms)
            reply, acknowledged = await pipe.execute()
        return reply, int(acknowledged)

    def _check_replicated(self, acknowledged: int | None) -> None:
        wait = self._wait
        if wait is not None and acknowledged is not None and acknowledged < wait.replicas:
            raise StoreUnavailable(
                f"the write reached {acknowledged} of {wait.replicas} Redis replicas "
                f"within {wait.timeout_ms} ms"
            )

    async def submit(
        self, job: Job, *, max_queued_for_customer: int, max_queued_total: int
    ) -> tuple[Job, bool]:
        if job.status is not JobStatus.queued:
            raise ValueError("a new job must be queued")
        route_key(job.request)  # a job the queue could not route is refused before it is stored
        reply, acknowledged = await self._run_replicated(
            self._submit,
            job.id,
            job.customer_id,
            job.lane.name,
            _idempotency_field(job.customer_id, job.idempotency_key),
            max_queued_for_customer,
            max_queued_total,
            _optional_float(job.expires_at) or "",
            _listing(job.customer_id, job.request.get("modality")),
            *_job_fields(job),
        )
        outcome = _text(reply[0])
        if outcome == "full":
            if _text(reply[1]) == "customer":
                raise QueueFull("customer", max_queued_for_customer)
            raise QueueFull("total", max_queued_total)
        stored = _to_job(reply[1])
        if outcome == "existing":
            if stored.request_digest != job.request_digest:
                raise IdempotencyConflict(stored)
            return stored, False
        self._check_replicated(acknowledged)
        return stored, True

    async def get(self, job_id: str) -> Job | None:
        (flat,) = await self._run(self._get_many, job_id)
        return _to_job(flat) if flat else None

    async def position(self, job_id: str) -> int | None:
        rank = await self._run(self._position, job_id)
        return None if rank is None else int(rank)

    async def depth(self) -> dict[str, int]:
        counts = await self._run(self._depth)
        return {lane: int(count) for lane, count in zip(LANES, counts, strict=True)}

    async def queued_for(self, customer_id: str) -> int:
        if self._closed:
            raise RuntimeError("the job store is closed")
        count = await self._client.hget(f"{self._ns}:queued", f"c:{customer_id}")
        return 0 if count is None else int(_text(count))

    async def claim(
        self,
        now: float,
        *,
        runnable: frozenset[str],
        served: frozenset[str],
        holder: str,
        lease_seconds: float,
    ) -> Job | None:
        flat = await self._run(
            self._claim, repr(float(now)), holder, repr(now + lease_seconds), len(runnable),
            *sorted(runnable), *sorted(served),
        )  # fmt: skip
        return _to_job(flat) if flat else None

    async def heartbeat(
        self, job_ids: Collection[str], holder: str, now: float, lease_seconds: float
    ) -> set[str]:
        if not job_ids:
            return set()
        held = await self._run(
            self._heartbeat, holder, repr(float(now)), repr(now + lease_seconds), *job_ids
        )
        return {_text(job_id) for job_id in held}

    async def expired_runs(self, now: float) -> list[Job]:
        rows = await self._run(self._expired_runs, repr(float(now)))
        return self._by_admission(rows)

    def _by_admission(self, rows: Sequence[Any]) -> list[Job]:
        ordered = sorted(rows, key=lambda flat: int(_text(_hash(flat)["seq"])))
        return [_to_job(flat) for flat in ordered]

    async def request_cancel(self, job_id: str, customer_id: str) -> CancelResult:
        return CancelResult(_text(await self._run(self._request_cancel, job_id, customer_id)))

    async def _extra_patch(self, job_id: str, extra: dict[str, Any] | None) -> tuple[str, str]:
        """(version read, merged extra JSON) for the scripts' compare-and-set; ('', '') when
        there is nothing to merge."""
        if not extra:
            return "", ""
        version, current = await self._client.hmget(
            f"{self._ns}:job:{job_id}", ["version", "extra"]
        )
        if version is None or current is None:
            return "0", "{}"  # gone or never stored: the script answers for it
        merged = merge_patch(orjson.loads(current), orjson.loads(orjson.dumps(extra)))
        return _text(version), orjson.dumps(merged).decode()

    async def finish(
        self,
        job_id: str,
        status: JobStatus,
        now: float,
        *,
        expect: frozenset[JobStatus],
        outputs: tuple[str, ...] = (),
        error: JobError | None = None,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
        usage: UsageRecord | None = None,
        holder: str | None = None,
    ) -> Job | None:
        check_finish(status, expect)
        usage_part: list[str | bytes] = (
            ["", *[""] * 10] if usage is None else [self._usage.namespace, *usage_args(usage)]
        )
        while True:
            version, merged = await self._extra_patch(job_id, extra)
            reply, acknowledged = await self._run_replicated(
                self._finish, job_id, status.value, repr(float(now)),
                ",".join(sorted(s.value for s in expect)),
                orjson.dumps(list(outputs)).decode(), _error_json(error),
                "" if seed is None else str(seed), version, merged, *usage_part, holder or "",
            )  # fmt: skip
            outcome = _text(reply[0])
            if outcome == "retry":
                continue  # extra changed since it was read: merge again
            if outcome == "missing":
                raise KeyError(job_id)
            if outcome == "skip":
                return None  # settled, claimed or requeued by another path first
            if outcome == "logged":
                assert usage is not None
                raise already_logged(usage)
            self._check_replicated(acknowledged)
            return _to_job(reply[1])

    async def requeue(
        self,
        job_id: str,
        *,
        extra: dict[str, Any] | None = None,
        count_retry: bool,
        holder: str | None = None,
    ) -> Job | None:
        while True:
            version, merged = await self._extra_patch(job_id, extra)
            reply = await self._run(
                self._requeue, job_id, int(count_retry), version, merged, holder or ""
            )
            outcome = _text(reply[0])
            if outcome == "retry":
                continue
            if outcome == "skip":
                return None
            return _to_job(reply[1])

    async def unsettled(self) -> list[Job]:
        return [_to_job(flat) for flat in await self._run(self._unsettled)]

    async def listed(
        self, where: JobFilter, *, after: str | None, limit: int, newest_first: bool
    ) -> list[Job]:
        if limit < 1:
            return []
        if after is not None:
            anchor = await self.get(after)
            if anchor is None or not where.in_scope(anchor):
                raise KeyError(after)
        if where.customer_id is None:
            index = "all"  # a modality, if any, is checked below with the other filters
        elif where.modality is None:
            index = f"by-customer:{where.customer_id}"
        else:
            index = f"listed:{_listing(where.customer_id, where.modality)}"
        status = "" if where.status is None else where.status.value
        found: list[Job] = []
        cursor = after or ""
        # Chunk by chunk, each one short script: a selective filter over a long history walks
        # many chunks without holding Redis for the whole walk.
        while len(found) < limit:
            reply = await self._run(
                self._listed, index, cursor, LIST_CHUNK, "desc" if newest_first else "asc", status
            )
            if reply is None:
                raise KeyError(after)  # admitted before the index existed
            rows, last = reply
            for flat in rows:
                job = _to_job(flat)
                if where.matches(job) and len(found) < limit:
                    found.append(job)
            cursor = _text(last)
            if not cursor:
                break
        return found

    async def queue_snapshot(self) -> QueueSnapshot:
        reply = await self._run(self._queue_snapshot)
        lanes = {}
        for i, lane in enumerate(LANES):
            depth, static = reply[2 * i], reply[2 * i + 1]
            oldest = None if not static else float(orjson.loads(static)["created_at"])
            lanes[lane] = LaneSnapshot(int(depth), oldest)
        return QueueSnapshot(lanes, int(reply[-1]))

    async def unfollowed(self, ended_before: float, limit: int) -> list[Job]:
        rows = await self._run(self._unfollowed, repr(float(ended_before)), limit)
        return [_to_job(flat) for flat in rows]

    async def followed_up(self, job_id: str) -> None:
        if self._closed:
            raise RuntimeError("the job store is closed")
        await self._client.zrem(f"{self._ns}:unfollowed", job_id)

    async def expired_queued(self, now: float) -> list[str]:
        flat = await self._run(self._expired_queued, repr(float(now)))
        pairs = [(_text(flat[i]), int(_text(flat[i + 1]))) for i in range(0, len(flat), 2)]
        return [job_id for job_id, _ in sorted(pairs, key=lambda pair: pair[1])]


def open_redis_job_store(
    url: str,
    *,
    namespace: str = key("jobs"),
    usage_namespace: str = key("usage"),
    wait: ReplicaWait | None = None,
) -> RedisJobStore:
    """A job store on the Redis at ``url`` with its usage stream (asyncio client for the store
    and appends, a blocking one for the consumers' threads). No I/O until the first call."""
    client = _open_async(url)
    stream = RedisUsageStream(client, open_sync_redis(url), usage_namespace)
    return RedisJobStore(client, stream, namespace, wait)

"""``redis://`` event bus: job logs as Redis Streams, cancels over pub/sub with acknowledgements.

How the data lies in Redis (every key under ``render:``):

* ``render:events:<job>`` — a Stream, the job's log. Entry ``n`` has the explicit stream id
  ``<n>-0`` (so "the events after ``after``" is ``XREAD … <after>-0``) and the fields ``n`` (the
  event number, 1, 2, 3…), ``event``, ``data`` (JSON) and ``at`` (when it was published: the
  publisher's clock, seconds since the epoch; absent from entries of builds before it).
* ``render:events-state:<job>`` — a Hash: ``last`` (the last number given), ``progress`` and
  ``step`` (the latest progress event's values, ``step`` as JSON) and, once the log is finished,
  ``ended`` (the terminal event's number).
* ``render:cancel`` — the pub/sub channel of cancels; a message is JSON ``[nonce, job]``.
* ``render:cancel-listeners:<job>`` — a Set of the ids of the bus instances (one per gateway
  process) that hold a listener for the job: SADD on ``listen_cancel``, SREM on
  ``stop_listening`` (expires a day after the last SADD, so a dead replica leaves no garbage).
* ``render:cancel-ack:<nonce>`` — a List a listener RPUSHes to when it received a cancel (expires
  after a few seconds).

Atomicity: ``publish`` is one Lua script (refuse after ``ended``, HINCRBY ``last``, XADD, the
progress fields, and on the terminal event ``ended`` plus the expiry of both keys), so two
replicas publishing for one job can never give a number twice or add after the end. Reading
(``follow``, ``progress``, ``has_log``) are single commands. ``request_cancel``'s check of the
registry and its PUBLISH are one Lua script.

Retention: an active log never expires; a finished one expires ``retention_s`` seconds (default
3600) after its terminal event, on every replica at once. (``memory://``'s ``keep_finished``
bounds a count per process; with Redis the bound is this time.) A client asking after that gets
the terminal event rebuilt from the job store, as with a dropped memory log.

Cancellation: ``request_cancel`` answers True only when a listener *received* the cancel. The
PUBLISH reply counts subscribed bus instances, not listeners of that job, so it is not the
answer. Instead: the publisher's script publishes only when the job's registry set names some
other instance; each instance holding a listener for the job sets its Event and RPUSHes an ack;
the publisher waits (BLPOP, ``ACK_TIMEOUT_S``) for one. A stale registry entry (a run that just
stopped, a dead replica) therefore costs a short wait and answers False, never a wrong True. A
listener in this same instance is set directly. Because ``listen_cancel`` is synchronous, its
SADD lands shortly after it returns (after this instance's subscription is confirmed, so a
publisher that sees the entry publishes to a live subscriber): a cancel that finds the registry
empty looks again for ``REGISTRATION_GRACE_S`` before answering False.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from render_gateway.stores.events import DEFAULT_RETENTION_S, JobEvent, LogEnded
from render_gateway.stores.redis_client import key, open_redis

log = logging.getLogger(__name__)

BLOCK_MS = 1000  # one XREAD BLOCK; between them a follower checks its log still exists
READ_COUNT = 256
ACK_TIMEOUT_S = 1.0
RECEIVE_POLL_S = 0.2
REGISTRATION_GRACE_S = 0.5
REGISTRY_TTL_S = 86_400
ACK_TTL_S = 10
MAX_STREAM_MS = 2**63  # stream ids' first part is 64 bits; larger ``after`` values are clamped

CANCEL_CHANNEL = key("cancel")

_PUBLISH = """
local stream, state = KEYS[1], KEYS[2]
if redis.call('HEXISTS', state, 'ended') == 1 then return 0 end
local n = redis.call('HINCRBY', state, 'last', 1)
redis.call('XADD', stream, n .. '-0', 'n', n, 'event', ARGV[1], 'data', ARGV[2], 'at', ARGV[7])
if ARGV[3] ~= '' then redis.call('HSET', state, 'progress', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', state, 'step', ARGV[4]) end
if ARGV[5] == '1' then
  redis.call('HSET', state, 'ended', n)
  redis.call('PEXPIRE', stream, ARGV[6])
  redis.call('PEXPIRE', state, ARGV[6])
end
return n
"""

# KEYS[1] the registry set; ARGV[1] this instance's id, ARGV[2] the message. Returns how many
# other instances the registry names (published to only when there are some).
_CANCEL = """
local others = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if member ~= ARGV[1] then others = others + 1 end
end
if others > 0 then redis.call('PUBLISH', KEYS[2], ARGV[2]) end
return others
"""


def _stream(job_id: str) -> str:
    return key("events", job_id)


def _state(job_id: str) -> str:
    return key("events-state", job_id)


def _registry(job_id: str) -> str:
    return key("cancel-listeners", job_id)


def _ack(nonce: str) -> str:
    return key("cancel-ack", nonce)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(reply: object) -> list[tuple[object, dict[object, object]]]:
    """The entries of a one-stream XREAD reply (RESP2: a list of [name, entries]; RESP3: a
    dict name → entries)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        streams = list(reply.values())
        entries = streams[0] if streams else []
    else:
        entries = cast(list[Any], reply)[0][1]
    return [(entry_id, cast(dict[object, object], fields)) for entry_id, fields in entries]


def _event(fields: dict[object, object]) -> JobEvent:
    values = {_text(k): v for k, v in fields.items()}
    data = json.loads(_text(values["data"]))
    at = float(_text(values["at"])) if "at" in values else None
    return JobEvent(int(_text(values["n"])), _text(values["event"]), cast(dict[str, Any], data), at)


class RedisEventBus:
    def __init__(self, client: aioredis.Redis, *, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self._client = client
        self._retention_ms = max(1, int(retention_s * 1000))
        self._publish = client.register_script(_PUBLISH)
        self._cancel = client.register_script(_CANCEL)
        self._instance = uuid.uuid4().hex
        self._listeners: dict[str, asyncio.Event] = {}
        # Registry changes, applied in order by one task once the subscription is live.
        self._ops: asyncio.Queue[tuple[bool, str]] = asyncio.Queue()
        self._subscribed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: aioredis.client.PubSub | None = None
        self._closing = False

    # Events.

    async def publish(self, job_id: str, event: str, data: dict[str, Any]) -> JobEvent:
        progress = step = ""
        if event == "progress":
            if "progress" in data:
                progress = repr(float(data["progress"]))
            if "step" in data:
                step = json.dumps(data["step"])
        item = JobEvent(0, event, data)
        at = time.time()
        number = await self._publish(
            keys=[_stream(job_id), _state(job_id)],
            args=[
                event,
                json.dumps(data, separators=(",", ":")),
                progress,
                step,
                "1" if item.terminal else "0",
                self._retention_ms,
                repr(at),
            ],
        )
        if int(cast(int, number)) == 0:
            raise LogEnded(f"job {job_id} already ended; no event may follow")
        return JobEvent(int(cast(int, number)), event, data, at)

    async def progress(self, job_id: str) -> tuple[float, int | None]:
        progress, step = cast(
            list[bytes | None], await self._client.hmget(_state(job_id), ["progress", "step"])
        )
        return (
            float(_text(progress)) if progress is not None else 0.0,
            cast(int | None, json.loads(_text(step))) if step is not None else None,
        )

    async def log(self, job_id: str) -> list[JobEvent]:
        entries = cast(list[Any], await self._client.xrange(_stream(job_id), "-", "+"))
        return [_event(cast(dict[object, object], fields)) for _, fields in entries]

    async def has_log(self, job_id: str) -> bool:
        return int(await self._client.exists(_stream(job_id))) > 0

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        stream = _stream(job_id)
        after = min(max(after, 0), MAX_STREAM_MS)
        if not await self.has_log(job_id):
            return
        block: int | None = None  # first a read without waiting, then blocking ones
        while True:
            reply = await self._client.xread({stream: f"{after}-0"}, count=READ_COUNT, block=block)
            entries = _entries(reply)
            for _, fields in entries:
                item = _event(fields)
                yield item
                after = item.id
                if item.terminal:
                    return
            if entries:
                block = None
                continue
            # Nothing new: end if the log is finished at or before ``after``, or gone (expired).
            # An entry added after this check is still read: XREAD from an explicit id returns
            # at once when the stream has entries past it.
            ended, last = cast(
                list[bytes | None], await self._client.hmget(_state(job_id), ["ended", "last"])
            )
            if last is None or (ended is not None and int(_text(ended)) <= after):
                return
            block = BLOCK_MS

    # Cancellation.

    def listen_cancel(self, job_id: str) -> asyncio.Event:
        listener = self._listeners.get(job_id)
        if listener is None:
            listener = self._listeners[job_id] = asyncio.Event()
            self._start()
            self._ops.put_nowait((True, job_id))
        return listener

    def stop_listening(self, job_id: str) -> None:
        if self._listeners.pop(job_id, None) is not None:
            self._ops.put_nowait((False, job_id))

    async def request_cancel(self, job_id: str) -> bool:
        listener = self._listeners.get(job_id)
        if listener is not None:
            listener.set()
            return True
        nonce = uuid.uuid4().hex
        message = json.dumps([nonce, job_id])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REGISTRATION_GRACE_S
        while True:
            others = await self._cancel(
                keys=[_registry(job_id), CANCEL_CHANNEL], args=[self._instance, message]
            )
            if int(cast(int, others)) > 0:
                break
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        acked = await self._client.blpop([_ack(nonce)], timeout=ACK_TIMEOUT_S)
        return acked is not None

    async def close(self) -> None:
        # redis-py's get_message can swallow a cancellation; the flag ends the loop regardless.
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2 * RECEIVE_POLL_S)
        self._tasks.clear()
        with contextlib.suppress(RedisError):
            if self._listeners and self._subscribed.is_set():
                pipe = self._client.pipeline(transaction=False)
                for job_id in self._listeners:
                    pipe.srem(_registry(job_id), self._instance)
                await pipe.execute()
        self._listeners.clear()
        if self._pubsub is not None:
            with contextlib.suppress(RedisError):
                # PubSub.aclose is untyped in redis-py 8.
                await cast(Callable[[], Awaitable[None]], self._pubsub.aclose)()
        await self._client.aclose()

    def _start(self) -> None:
        if self._tasks:
            return
        self._pubsub = self._client.pubsub()
        self._tasks = [
            asyncio.create_task(self._receive(self._pubsub)),
            asyncio.create_task(self._register()),
        ]

    async def _receive(self, pubsub: aioredis.client.PubSub) -> None:
        """Subscribe, confirm it, then set the listeners the cancels name and acknowledge."""
        while not self._closing:
            try:
                if not pubsub.subscribed:
                    await pubsub.subscribe(CANCEL_CHANNEL)
                message = await pubsub.get_message(timeout=RECEIVE_POLL_S)
            except RedisError:
                log.warning("cancel subscription lost; reconnecting", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            if message["type"] == "subscribe":
                self._subscribed.set()
                continue
            if message["type"] != "message":
                continue
            nonce, job_id = json.loads(_text(message["data"]))
            listener = self._listeners.get(job_id)
            if listener is None:
                continue
            listener.set()
            try:
                pipe = self._client.pipeline(transaction=True)
                pipe.rpush(_ack(nonce), 1)
                pipe.expire(_ack(nonce), ACK_TTL_S)
                await pipe.execute()
            except RedisError:
                log.warning("could not acknowledge the cancel of %s", job_id, exc_info=True)

    async def _register(self) -> None:
        await self._subscribed.wait()
        while True:
            adding, job_id = await self._ops.get()
            registry = _registry(job_id)
            try:
                if adding:
                    pipe = self._client.pipeline(transaction=True)
                    pipe.sadd(registry, self._instance)
                    pipe.expire(registry, REGISTRY_TTL_S)
                    await pipe.execute()
                else:
                    await self._client.srem(registry, self._instance)
            except RedisError:
                log.warning("could not update the cancel registry of %s", job_id, exc_info=True)


def open_redis_event_bus(url: str, *, retention_s: float = DEFAULT_RETENTION_S) -> RedisEventBus:
    return RedisEventBus(open_redis(url), retention_s=retention_s)

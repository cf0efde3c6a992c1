"""Queued jobs over one long-lived connection (``GET /ws``): the client's messages become the
async tier's use cases, and each job's events come back as messages carrying the client's id.

Nothing here knows the socket: the HTTP layer decodes each text frame, hands the value to
``SocketJobs.handle`` and sends what the ``Outbox`` gives it. A job submitted here is an
ordinary queued job (``POST /queue``'s admission, store and scheduler): the connection only
watches it, so a client that is slow or goes away never holds up or loses a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from render_gateway.application.job_cases import JobCases, Submitted
from render_gateway.application.job_watch import Watched, watch
from render_gateway.application.refusals import RefusalKind, Refused
from render_gateway.auth.principal import Principal
from render_gateway.core.ids import new_request_id
from render_gateway.core.jobs import Job
from render_gateway.stores.unavailable import StoreUnavailable

log = logging.getLogger(__name__)

MAX_JOBS_PER_SOCKET = 16  # jobs one connection follows at once; more → too_many_jobs
# Messages waiting to be sent: past this, progress-like ones are dropped (a terminal one never
# is) and the connection stops reading the client's messages until the client reads.
OUTBOX_LIMIT = 64
MAX_CLIENT_ID_CHARS = 128
# Events a slow reader may miss: each one is superseded by the next, or by the terminal event.
DROPPABLE = frozenset({"position", "progress", "frame"})
# The routing and queue options of POST /queue: beside ``request`` in a generate message.
QUEUE_FIELDS = ("modality", "family", "model", "task", "format", "backend", "priority",
                "webhook", "ttl", "idempotency_key")  # fmt: skip
STORE_RETRY_SECONDS = 1.0
STORE_RETRY_AFTER_S = 2

ClientId = str | int
# POST /queue's admission for one flat body (routing, queue options and generation fields):
# the HTTP layer validates it with the same model and calls JobCases.submit; Refused on a no.
SubmitBody = Callable[[dict[str, Any], str], Awaitable[Submitted]]


class Outbox:
    """The messages waiting for the socket: bounded for those a slow reader may miss, never
    for the rest (acks, terminal events and errors, which are few: one per job or per message
    read, and reading stops while the outbox is full)."""

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self._limit = limit
        self._items: deque[dict[str, Any]] = deque()
        self._changed = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: dict[str, Any], *, droppable: bool = False) -> bool:
        """Queue ``message``; False when it was dropped (droppable, and the outbox full)."""
        if droppable and len(self._items) >= self._limit:
            self.dropped += 1
            return False
        self._items.append(message)
        self._changed.set()
        return True

    async def get(self) -> dict[str, Any]:
        while not self._items:
            self._changed.clear()
            await self._changed.wait()
        message = self._items.popleft()
        self._changed.set()
        return message

    async def room(self) -> None:
        """Until the outbox is below its limit (the client is reading)."""
        while len(self._items) >= self._limit:
            self._changed.clear()
            await self._changed.wait()

    async def drained(self) -> None:
        while self._items:
            self._changed.clear()
            await self._changed.wait()


@dataclass
class SocketStats:
    """What every connection of this process adds up to (for /metrics)."""

    connections: int = 0
    followed: int = 0  # jobs whose events a connection relays now
    dropped: int = 0  # progress-like messages dropped for slow readers, since start


@dataclass
class _Followed:
    job_id: str
    task: asyncio.Task[None] | None = field(default=None)
    forgotten: bool = False
    # Clear while a cancel of the job is being asked: its answer (``cancelling``) goes out
    # before the terminal event that the cancel itself may publish.
    cancel_answered: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.cancel_answered.set()


def error_message(
    client_id: ClientId | None,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An ``error`` message: the HTTP error body's code, message and details, for ``id``."""
    body: dict[str, Any] = {"type": "error", "id": client_id, "error": code, "message": message}
    if details:
        body["details"] = details
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def client_id_of(message: dict[str, Any]) -> ClientId | None:
    """The message's ``id`` when it is one (a string of 1–128 characters or an integer)."""
    value = message.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and 0 < len(value) <= MAX_CLIENT_ID_CHARS:
        return value
    return None


def queue_body_of(message: dict[str, Any]) -> dict[str, Any]:
    """A generate message as POST /queue's flat body: routing and queue options from beside
    ``request``, the generation fields from inside it. Refused when the shape is wrong."""
    unknown = sorted(set(message) - {"type", "id", "request", *QUEUE_FIELDS})
    if unknown:
        raise _invalid(
            f"{unknown[0]}: not a field of a generate message; generation fields go in 'request'",
            unknown[0],
        )
    generation = message.get("request", {})
    if not isinstance(generation, dict):
        raise _invalid("request: must be an object of generation fields", "request")
    misplaced = sorted(set(generation) & set(QUEUE_FIELDS))
    if misplaced:
        raise _invalid(
            f"request.{misplaced[0]}: routing and queue options go beside 'request'",
            f"request.{misplaced[0]}",
        )
    routing = {k: message[k] for k in QUEUE_FIELDS if k in message}
    return {**generation, **routing}


def _what_type(kind: Any) -> str:
    if kind is None:
        return "missing"
    if isinstance(kind, str) and len(kind) <= 32:  # echoed only when short
        return f"{kind!r} is not a message type"
    return "not a message type"


def _invalid(text: str, field_name: str) -> Refused:
    return Refused(RefusalKind.invalid, "invalid_request", text, {"field": field_name})


class SocketJobs:
    """One connection's jobs, by the client's ids."""

    def __init__(
        self,
        cases: JobCases,
        submit: SubmitBody,
        principal: Principal,
        outbox: Outbox,
        stats: SocketStats,
        *,
        max_jobs: int = MAX_JOBS_PER_SOCKET,
    ) -> None:
        self._cases, self._submit, self._principal = cases, submit, principal
        self._outbox, self._stats, self._max_jobs = outbox, stats, max_jobs
        self._jobs: dict[ClientId, _Followed] = {}

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def refuse(self, code: str, message: str, client_id: ClientId | None = None) -> None:
        """An error for a message the HTTP layer could not decode (not JSON, too large)."""
        self._outbox.put(error_message(client_id, code, message))

    async def handle(self, message: Any) -> None:
        """One decoded message. Every problem becomes an ``error`` message; nothing raises."""
        client_id: ClientId | None = None
        try:
            if not isinstance(message, dict):
                raise _invalid("a message is a JSON object with 'type' and 'id'", "type")
            client_id = client_id_of(message)
            kind = message.get("type")
            if kind not in ("generate", "cancel"):
                raise _invalid(f"type: {_what_type(kind)} (generate, cancel)", "type")
            if client_id is None:
                raise _invalid(
                    f"id: a string of 1-{MAX_CLIENT_ID_CHARS} characters or an integer", "id"
                )
            if kind == "generate":
                await self._generate(client_id, message)
            else:
                await self._cancel(client_id)
        except Refused as exc:
            self._outbox.put(self._refusal(client_id, exc))
        except StoreUnavailable:
            self._outbox.put(
                error_message(
                    client_id,
                    "store_unavailable",
                    "the gateway's store is unreachable; retry shortly",
                    retry_after=STORE_RETRY_AFTER_S,
                )
            )
        except Exception:
            log.exception("websocket message failed")
            self._outbox.put(error_message(client_id, "internal", "internal error; see the logs"))

    def _refusal(self, client_id: ClientId | None, exc: Refused, **extra: Any) -> dict[str, Any]:
        retry_after = exc.retry_after_seconds
        if retry_after is None and exc.rate is not None:
            retry_after = exc.rate.retry_after_seconds
        return error_message(
            client_id, exc.code, exc.message, exc.details, retry_after=retry_after, **extra
        )

    async def _generate(self, client_id: ClientId, message: dict[str, Any]) -> None:
        if client_id in self._jobs:
            raise Refused(
                RefusalKind.conflict,
                "duplicate_id",
                f"id {client_id!r} is a job still in flight on this connection",
            )
        if len(self._jobs) >= self._max_jobs:
            raise Refused(
                RefusalKind.too_many,
                "too_many_jobs",
                f"at most {self._max_jobs} jobs in flight per connection",
                {"limit": self._max_jobs},
            )
        body = queue_body_of(message)
        request_id = new_request_id()
        try:
            submitted = await self._submit(body, request_id)
        except Refused as exc:
            self._outbox.put(self._refusal(client_id, exc, request_id=request_id))
            return
        job = submitted.job
        rate = submitted.rate
        self._outbox.put(
            {
                "type": "ack",
                "id": client_id,
                "job_id": job.id,
                "request_id": str(job.extra.get("request_id", request_id)),
                "status": job.status.value,
                "position": submitted.position,
                "eta_seconds": submitted.eta_seconds,
                "rate_limit": {
                    "limit": rate.limit,
                    "remaining": rate.remaining,
                    "reset": rate.reset_seconds,
                },
            }
        )
        followed = _Followed(job.id)
        self._jobs[client_id] = followed
        self._stats.followed += 1
        followed.task = asyncio.create_task(
            self._relay(client_id, job, followed), name=f"ws-relay-{job.id}"
        )
        # A callback, not a ``finally``: a task cancelled before it first ran runs no code.
        followed.task.add_done_callback(lambda _: self._forget(client_id, followed))

    def _forget(self, client_id: ClientId, followed: _Followed) -> None:
        """The id is free again (once, whichever of the terminal event, the relay's end or
        the connection's close comes first)."""
        if followed.forgotten:
            return
        followed.forgotten = True
        if self._jobs.get(client_id) is followed:
            del self._jobs[client_id]
        self._stats.followed -= 1

    async def _cancel(self, client_id: ClientId) -> None:
        followed = self._jobs.get(client_id)
        if followed is None:
            raise Refused(
                RefusalKind.not_found,
                "job_not_found",
                f"no job in flight on this connection with id {client_id!r}",
            )
        followed.cancel_answered.clear()
        try:
            outcome = await self._cases.cancel(followed.job_id, self._principal)
        except Refused as exc:
            self._outbox.put(self._refusal(client_id, exc, job_id=followed.job_id))
            return
        finally:
            followed.cancel_answered.set()  # wakes the relay only at its next turn: after the put
        # The job's terminal event follows from its relay (error, code "cancelled"); a cancel
        # only recorded (no run answered) ends the job when its run is recovered.
        self._outbox.put(
            {
                "type": "cancelling",
                "id": client_id,
                "job_id": followed.job_id,
                "outcome": outcome.value,
            }
        )

    async def _relay(self, client_id: ClientId, job: Job, followed: _Followed) -> None:
        after, current = 0, job
        try:
            while True:
                try:
                    async for item in watch(self._cases, current, after):
                        if item.terminal:
                            await followed.cancel_answered.wait()
                            self._forget(client_id, followed)  # free once the client knows
                        self._send_event(client_id, job.id, item)
                        if item.terminal:
                            return
                        if item.id is not None:
                            after = item.id
                    # The log ended without its terminal event (trimmed): the store has it.
                    current = await self._cases.refreshed(current)
                    for name, data in self._cases.terminal_event(current):
                        await followed.cancel_answered.wait()
                        self._forget(client_id, followed)
                        self._send_event(client_id, job.id, Watched(name, data, None))
                        return
                    if current.status.terminal:
                        return
                    await asyncio.sleep(STORE_RETRY_SECONDS)  # not ended after all: again
                except StoreUnavailable:
                    await asyncio.sleep(STORE_RETRY_SECONDS)  # Redis restarts in seconds
                    with contextlib.suppress(StoreUnavailable):
                        current = await self._cases.refreshed(current)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("websocket relay of job %s failed", job.id)
            # Not the job's end (no ``job_id`` beside the code): its events stopped coming.
            self._outbox.put(
                error_message(
                    client_id,
                    "internal",
                    f"lost the events of job {job.id}; poll GET /jobs/{job.id}",
                    {"job_id": job.id},
                )
            )

    def _send_event(self, client_id: ClientId, job_id: str, item: Watched) -> None:
        data = item.data
        message: dict[str, Any]
        if item.event == "error":
            message = error_message(
                client_id,
                str(data.get("code", "error")),
                str(data.get("message", "")),
                job_id=job_id,
            )
        elif item.event == "preview":  # the SSE ``preview``; no backend sends one today
            message = {"type": "frame", "id": client_id, "job_id": job_id, **data}
        else:
            message = {**data, "type": item.event, "id": client_id, "job_id": job_id}
        if item.id is not None:
            message["event_id"] = item.id
        name = message["type"]
        if not self._outbox.put(message, droppable=name in DROPPABLE):
            self._stats.dropped += 1

    async def close(self) -> None:
        """The connection has ended: stop relaying (the jobs themselves go on)."""
        followed = list(self._jobs.items())
        for _, entry in followed:
            if entry.task is not None:
                entry.task.cancel()
        for client_id, entry in followed:
            if entry.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await entry.task
            self._forget(client_id, entry)

"""The job event bus: each job's numbered events (for SSE) and its cancellation.

With several replicas, the run of a job happens on one of them while its SSE clients and its
DELETE may arrive at any other. So both halves are a bus, not a process's dictionaries:

* events: a run publishes its job's events; any replica follows them, replaying from any
  ``Last-Event-ID``. A job's log ends with its terminal event (``complete`` or ``error``) and
  nothing may follow it.
* cancellation: a run registers a listener where it runs; a cancel requested anywhere reaches
  it there.

``memory://`` is this process only (one replica). ``redis://`` / ``rediss://`` (streams for the
logs, pub/sub for the cancels; stores/redis_events.py) is shared by every replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from render_gateway.stores.urls import parse_store_url

TERMINAL_EVENTS = frozenset({"complete", "error"})

DEFAULT_KEEP_FINISHED = 10_000

DEFAULT_RETENTION_S = 3600.0


class LogEnded(RuntimeError):
    """The job's log already has its terminal event: nothing may follow it."""


@dataclass(frozen=True)
class JobEvent:
    id: int  # 1, 2, 3... per job: the SSE id a client resumes after
    event: str
    data: dict[str, Any]
    # When it was published (seconds since the epoch, the publisher's clock); None for an
    # event a build before the timestamps published (GET /jobs/{id}/timeline shows null).
    at: float | None = field(default=None, compare=False)

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


class EventBus(Protocol):
    async def publish(self, job_id: str, event: str, data: dict[str, Any]) -> JobEvent:
        """Append to the job's log (numbered from 1) and wake its followers everywhere.
        LogEnded once the log has a terminal event: nothing may follow it."""
        ...

    async def progress(self, job_id: str) -> tuple[float, int | None]:
        """The latest ``progress`` event's progress and step; (0.0, None) without a log."""
        ...

    async def log(self, job_id: str) -> list[JobEvent]:
        """The job's events published so far, in order, without waiting for more; [] when it
        has no log (never started, or dropped by the bound on finished logs)."""
        ...

    async def has_log(self, job_id: str) -> bool:
        """Whether the job has a log here: it has started (or been cancelled while queued) and
        has not yet been dropped by the bound on finished logs."""
        ...

    def follow(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        """The job's events with id > ``after``, then live ones as they are published; ends
        after the terminal one (at once if ``after`` is at or past it), and at once if the job
        has no log."""
        ...

    def listen_cancel(self, job_id: str) -> asyncio.Event:
        """Register the job's run here: the Event is set when a cancel for ``job_id`` arrives,
        from this process or another replica. Calling it again while registered returns the
        same Event. The Event is the run's own: this process may set it too (a budget stop, a
        drain) without going through the bus."""
        ...

    def stop_listening(self, job_id: str) -> None:
        """The run has ended here: later cancels for ``job_id`` reach nobody."""
        ...

    async def request_cancel(self, job_id: str) -> bool:
        """Deliver a cancel to the job's running listener, wherever it is.

        True when a registered listener received it; False when nobody did. The bool exists
        because a cancel is not stored: a job the job store calls running may have no listener
        (its run has not registered yet, or has just ended, or its replica died and the lease
        recovery will settle it), and the caller must know the cancel did not land so it can
        retry or leave the job to that recovery rather than assume the run will stop.
        """
        ...

    async def close(self) -> None:
        """Release connections and subscriptions; the bus is not used after this."""
        ...


def open_event_bus(
    url: str,
    *,
    keep_finished: int = DEFAULT_KEEP_FINISHED,
    retention_s: float = DEFAULT_RETENTION_S,
) -> EventBus:
    """The bus ``[gateway.stores] events`` names. Finished jobs' logs are kept for replay, active
    ones never dropped: ``memory://`` keeps the ``keep_finished`` most recently finished;
    ``redis://`` keeps each for ``retention_s`` seconds after its terminal event."""
    parsed = parse_store_url("events", url, ("memory", "redis", "rediss"))
    if parsed.scheme == "memory":
        # Imported here: the implementation imports JobEvent from this module.
        from render_gateway.stores.memory_events import MemoryEventBus

        return MemoryEventBus(keep_finished=keep_finished)
    if parsed.scheme in ("redis", "rediss"):
        from render_gateway.stores.redis_events import open_redis_event_bus

        return open_redis_event_bus(url, retention_s=retention_s)
    raise AssertionError(f"unhandled scheme {parsed.scheme}")  # parse_store_url checked it

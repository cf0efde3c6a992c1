"""``memory://`` event bus: logs and cancel listeners in this process (one replica).

Logs live while a job is active and for a while after it ends (the ``keep_finished`` most
recently finished); a client asking about an older job gets its terminal event rebuilt from the
job store instead (the SSE route does that).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from render_gateway.stores.events import DEFAULT_KEEP_FINISHED, JobEvent, LogEnded


@dataclass
class _Log:
    events: list[JobEvent] = field(default_factory=list)
    # Set (and replaced) on every publish: each follower waits on the one it saw last.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    progress: float = 0.0
    step: int | None = None

    @property
    def finished(self) -> bool:
        return bool(self.events) and self.events[-1].terminal


class MemoryEventBus:
    def __init__(self, keep_finished: int = DEFAULT_KEEP_FINISHED) -> None:
        # Ordered so that the finished logs are trimmed oldest-finished first.
        self._logs: OrderedDict[str, _Log] = OrderedDict()
        self._keep_finished = keep_finished
        self._finished = 0
        self._listeners: dict[str, asyncio.Event] = {}

    async def publish(self, job_id: str, event: str, data: dict[str, Any]) -> JobEvent:
        log = self._logs.get(job_id)
        if log is None:
            log = self._logs[job_id] = _Log()
        if log.finished:
            raise LogEnded(f"job {job_id} already ended; no event may follow")
        item = JobEvent(len(log.events) + 1, event, data, time.time())
        log.events.append(item)
        if event == "progress":
            log.progress = float(data.get("progress", log.progress))
            log.step = data.get("step", log.step)
        if item.terminal:
            self._finished += 1
            self._logs.move_to_end(job_id)
            self._trim()
        log.changed.set()
        log.changed = asyncio.Event()
        return item

    async def progress(self, job_id: str) -> tuple[float, int | None]:
        log = self._logs.get(job_id)
        return (log.progress, log.step) if log else (0.0, None)

    async def log(self, job_id: str) -> list[JobEvent]:
        log = self._logs.get(job_id)
        return [] if log is None else list(log.events)

    async def has_log(self, job_id: str) -> bool:
        return job_id in self._logs

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        log = self._logs.get(job_id)
        if log is None:
            return
        # Held, not looked up again: a follower woken only after its finished log was trimmed
        # still gets the terminal event.
        while True:
            waiter = log.changed
            for item in log.events[after:]:
                yield item
                after = item.id
                if item.terminal:
                    return
            if log.finished:
                return  # ``after`` is at or past the terminal event: nothing will ever follow
            await waiter.wait()

    def listen_cancel(self, job_id: str) -> asyncio.Event:
        listener = self._listeners.get(job_id)
        if listener is None:
            listener = self._listeners[job_id] = asyncio.Event()
        return listener

    def stop_listening(self, job_id: str) -> None:
        self._listeners.pop(job_id, None)

    async def request_cancel(self, job_id: str) -> bool:
        listener = self._listeners.get(job_id)
        if listener is None:
            return False
        listener.set()
        return True

    async def close(self) -> None:
        # Nothing to release in memory; the logs go with the process.
        self._listeners.clear()

    def _trim(self) -> None:
        # Forget the oldest finished logs beyond the bound (active ones are never dropped).
        while self._finished > self._keep_finished:
            for job_id, log in self._logs.items():
                if log.finished:
                    del self._logs[job_id]
                    self._finished -= 1
                    break
            else:
                return

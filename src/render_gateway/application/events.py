"""Per-job event logs for SSE: numbered events, replayable from any ``Last-Event-ID``.

Logs live in memory while a job is active and for a while after it ends (bounded); a client
that asks about an older job gets its terminal event rebuilt from the job store instead.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

TERMINAL_EVENTS = frozenset({"complete", "error"})


@dataclass(frozen=True)
class JobEvent:
    id: int
    event: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


@dataclass
class _Log:
    events: list[JobEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    progress: float = 0.0
    step: int | None = None

    @property
    def finished(self) -> bool:
        return bool(self.events) and self.events[-1].terminal


class JobEventHub:
    def __init__(self, keep_finished: int = 10_000) -> None:
        self._logs: OrderedDict[str, _Log] = OrderedDict()
        self._keep_finished = keep_finished
        self._finished = 0

    def publish(self, job_id: str, event: str, data: dict[str, Any]) -> JobEvent:
        log = self._logs.get(job_id)
        if log is None:
            log = self._logs[job_id] = _Log()
        if log.finished:
            raise RuntimeError(f"job {job_id} already ended; no event may follow")
        item = JobEvent(len(log.events) + 1, event, data)
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

    def progress(self, job_id: str) -> tuple[float, int | None]:
        log = self._logs.get(job_id)
        return (log.progress, log.step) if log else (0.0, None)

    def has_log(self, job_id: str) -> bool:
        return job_id in self._logs

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        """Events with id > ``after``, then new ones as they come; ends after a terminal one."""
        while True:
            log = self._logs.get(job_id)
            if log is None:
                return
            waiter = log.changed
            for item in log.events[after:]:
                yield item
                after = item.id
                if item.terminal:
                    return
            if log.finished:
                return  # ``after`` is at or past the terminal event: nothing will ever follow
            await waiter.wait()

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

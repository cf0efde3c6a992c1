"""A job's events as a watcher sees them, whatever carries them (SSE, WebSocket): its position
while it waits, then its log on the event bus up to the terminal event.

The bus has a job's log only once something happened to it (it started, or was cancelled while
queued), and a job that ended before this process knew of it (a restart, another replica's
trimmed log) has none: its terminal event is rebuilt from the job store instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from render_gateway.application.job_cases import JobCases
from render_gateway.core.jobs import Job, JobStatus

# The id of a terminal event rebuilt from the store: past any live event's id (counters from
# 1, 18 digits at most), so a client that saw it and asks again after it gets nothing more.
REBUILT_TERMINAL_ID = 10**18 - 1
POSITION_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Watched:
    event: str  # position, started, progress, preview, complete, error
    data: dict[str, Any]
    id: int | None  # the bus's event id (what Last-Event-ID resumes after); None for position

    @property
    def terminal(self) -> bool:
        return self.event in ("complete", "error")


async def watch(cases: JobCases, job: Job, after: int = 0) -> AsyncIterator[Watched]:
    """``job``'s events after the event id ``after``, ending with its terminal event (at once
    when ``after`` is at or past it)."""
    current = job
    last_position: int | None = None
    # Until the bus has its log: its position while queued; a job just claimed, whose run has
    # not yet published ``started``, is waited for (a watcher must not end before its job).
    while not current.status.terminal and not await cases.has_events(job.id):
        if current.status is JobStatus.queued:
            position = await cases.position(current)
            if position != last_position:
                data = {"position": position, "eta_seconds": cases.eta_seconds(current, position)}
                yield Watched("position", data, None)
                last_position = position
        await asyncio.sleep(POSITION_POLL_SECONDS)
        current = await cases.refreshed(current)
    if not await cases.has_events(job.id):
        if after >= REBUILT_TERMINAL_ID:
            return  # the client has had it
        for name, data in cases.terminal_event(current):
            yield Watched(name, data, REBUILT_TERMINAL_ID)
        return
    async for item in cases.follow(job.id, after):
        yield Watched(item.event, item.data, item.id)

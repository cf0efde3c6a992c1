"""A job's timeline (GET /jobs/{id}/timeline): what happened to it, in order, with when.

Its source is the job's event log on the bus (every event a run published, each stamped when
it was published) after the admission, which no log records (the job's own ``created_at``).
A log is kept only for a while after its job ended (stores/events.py: a bound on finished
logs, or their retention), and a job that never started has none: then the timeline is rebuilt
from the job's own times (``source`` "job"): queued, started, and its end.

A timeline is read far from where the run happened (a console), so it carries the shape of what
happened, not the payloads: a preview's image is left out, only its step kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from render_gateway.application.job_views import iso
from render_gateway.application.settle import terminal_event
from render_gateway.core.jobs import Job, JobStatus
from render_gateway.stores.events import JobEvent

# What of a preview event the timeline keeps (its image is base64 frames: left out).
PREVIEW_FIELDS = ("step", "steps", "index")


def timeline(job: Job, log: Sequence[JobEvent], asset_url: Callable[[str], str]) -> dict[str, Any]:
    """``{"id", "events": [{"type", "at", "data"}], "source": "events" | "job"}``."""
    events = [_entry("queued", job.created_at, {"lane": job.lane.name})]
    if log:
        events += [_from_log(job, event) for event in log]
        return {"id": job.id, "events": events, "source": "events"}
    if job.started_at is not None:
        events.append(_entry("started", job.started_at, {}))
    ended = terminal_event(job, asset_url)
    if ended is not None:
        name, data = ended
        events.append(_entry(_terminal_type(job, name), job.completed_at, data))
    return {"id": job.id, "events": events, "source": "job"}


def _from_log(job: Job, event: JobEvent) -> dict[str, Any]:
    data = event.data
    if event.event == "preview":
        data = {name: data[name] for name in PREVIEW_FIELDS if name in data}
    name = _terminal_type(job, event.event) if event.terminal else event.event
    return _entry(name, event.at, data)


def _terminal_type(job: Job, name: str) -> str:
    """A cancelled job's end is an ``error`` event on the bus (code ``cancelled``, as SSE
    clients see it); the timeline names it for what it is."""
    return "cancelled" if name == "error" and job.status is JobStatus.cancelled else name


def _entry(name: str, at: float | None, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": name, "at": iso(at), "data": data}

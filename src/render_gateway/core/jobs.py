"""Jobs as the gateway sees them: pure types, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from render_gateway.core.lanes import Lane
from render_gateway.core.routes import route_key_of


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    complete = "complete"
    error = "error"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.complete, JobStatus.error, JobStatus.cancelled)


@dataclass(frozen=True)
class JobError:
    code: str
    message: str
    retriable: bool


@dataclass(frozen=True)
class Job:
    """One asynchronous generation. Times are seconds since the epoch (UTC)."""

    id: str
    customer_id: str
    lane: Lane
    request: dict[str, Any]  # routing (modality, family, model, task, …) + generation fields
    created_at: float
    status: JobStatus = JobStatus.queued
    started_at: float | None = None
    completed_at: float | None = None
    retries: int = 0
    seed: int | None = None
    outputs: tuple[str, ...] = ()
    error: JobError | None = None
    idempotency_key: str | None = None
    request_digest: str | None = None  # tells "same key, same body" from "same key, new body"
    expires_at: float | None = None  # ttl: auto-cancel if still queued then
    webhook: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Set durably by a customer's cancel (JobStore.request_cancel): if the run is lost (its
    # replica died, the gateway restarted), or a claim beat the settle of a queued job, the job
    # that is claimed again is settled cancelled, not run.
    cancel_requested: bool = False
    # Who holds the run while it is running (the store's lease holder; None otherwise): the
    # recovery of a lapsed run is fenced by it, so it never touches a later holder's run.
    run_holder: str | None = None

    def evolve(self, **changes: Any) -> Job:
        return replace(self, **changes)


def route_key(request: Mapping[str, Any]) -> str:
    """Which backends can run a request: ``family/model/backend`` (backend empty when any
    backend serving the model will do). The queue compares a head's key with the keys that have
    capacity, so it must be computed the same way everywhere."""
    return route_key_of(request["family"], request["model"], request.get("backend"))

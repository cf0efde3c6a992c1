"""The job store protocol: durable jobs plus the priority queue over them.

``submit`` returns only once the job is durable (a 202 may then be sent); positions are exact
and come from an in-memory order-statistic index kept in step with what is committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from render_gateway.core.jobs import Job, JobError, JobStatus
from render_gateway.core.usage_records import UsageRecord
from render_gateway.stores.usage_log import UsageLog


class IdempotencyConflict(Exception):
    """The customer reused an idempotency key with a different request body (a 409)."""

    def __init__(self, existing: Job) -> None:
        super().__init__(f"idempotency key already used for job {existing.id} with another body")
        self.existing = existing


class CancelResult(StrEnum):
    cancelled = "cancelled"  # it was queued; it is now cancelled
    running = "running"  # it is running: the caller must abort the backend call
    terminal = "terminal"  # already finished (a 409)
    not_found = "not_found"  # unknown, or another customer's (a 404)


class RecoveryPolicy(StrEnum):
    requeue = "requeue"  # a job that was running when the process died runs again (retries + 1)
    fail = "fail"  # it ends as a retriable error


@dataclass(frozen=True)
class Recovery:
    requeued: tuple[str, ...]
    failed: tuple[str, ...]
    queued: int


class JobStore(Protocol):
    @property
    def usage_log(self) -> UsageLog:
        """Where finished requests' usage records go (in the same commits as the jobs)."""
        ...

    async def open(self, policy: RecoveryPolicy, max_retries: int) -> Recovery: ...

    async def close(self) -> None: ...

    async def submit(self, job: Job) -> tuple[Job, bool]:
        """Store a new queued job durably; returns (job, created). A repeated idempotency key
        with the same digest returns the existing job and False."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    def position(self, job_id: str) -> int | None: ...

    def peek(self) -> str | None:
        """The id of the job that would be claimed next."""
        ...

    def depth(self) -> dict[str, int]: ...

    async def claim_next(self, now: float) -> Job | None:
        """The head of the highest lane, marked running (or None when nothing is queued)."""
        ...

    async def cancel(self, job_id: str, customer_id: str, now: float) -> CancelResult: ...

    async def finish(
        self,
        job_id: str,
        status: JobStatus,
        now: float,
        outputs: tuple[str, ...] = (),
        error: JobError | None = None,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
        usage: UsageRecord | None = None,
    ) -> Job:
        """Settle a running job; ``extra`` is merged into the job's extra fields and ``usage``
        is appended to the usage log, both in the same commit as the status."""
        ...

    async def requeue(self, job_id: str, extra: dict[str, Any] | None = None) -> Job | None:
        """Put a running job back at its place in the queue with its retries unchanged (a clean
        stop interrupted it; it did not fail), merging ``extra``; None if it is not running."""
        ...

    async def unsettled(self) -> list[Job]:
        """Jobs admitted but not finished (queued or running), oldest first."""
        ...

    async def expire(self, now: float) -> list[str]:
        """Cancel queued jobs whose ttl has passed; returns their ids."""
        ...

    def queued_for(self, customer_id: str) -> int:
        """How many of this customer's jobs are queued (for per-customer depth limits)."""
        ...

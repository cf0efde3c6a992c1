"""The one way a request ends: ``Settlement``.

Every path that ends a job — a run that completes, fails, times out or is stopped (by its owner
or its budget), a queued job cancelled or past its ttl, a job whose backend left, a run lost in
a crash, a run the drain could not requeue — ends it here, and here only. In one step it:

1. writes the terminal status with the job's usage record, in one commit of the job store
   (``JobStore.finish`` only moves a job from the status the caller expects, so two paths that
   race to end the same job settle it once: the loser gets None and does nothing else);
2. publishes the terminal event (SSE, progress readers);
3. settles the budget with what the record bills (or releases the hold when nothing ran);
4. enqueues the webhook, signed, durable.

Steps 2–4 follow the commit; a process killed between them loses nothing that matters for
billing: the record is in the usage log, budgets are rebuilt from it at start, and the event is
rebuilt from the job store by any reader. The sync tier has no job; ``sync_request`` appends its
record and settles its budget the same way, before the response is sent.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from render_gateway.application.job_views import job_view
from render_gateway.application.webhooks import WebhookSender
from render_gateway.core.jobs import Job, JobError, JobStatus
from render_gateway.core.usage_records import UsageRecord
from render_gateway.metering.meter import Meter
from render_gateway.stores.events import EventBus
from render_gateway.stores.jobs import JobStore
from render_gateway.stores.usage_log import UsageAlreadyLogged

QUEUED = frozenset({JobStatus.queued})
RUNNING = frozenset({JobStatus.running})


@dataclass(frozen=True)
class Ending:
    """How a job ends: its terminal status and the event its followers get."""

    status: JobStatus
    event: str  # "complete" or "error"
    data: dict[str, Any]
    error: JobError | None = None
    outputs: tuple[str, ...] = ()
    seed: int | None = None

    @classmethod
    def failed(cls, error: JobError, status: JobStatus = JobStatus.error) -> Ending:
        return cls(status, "error", {"code": error.code, "message": error.message}, error)

    @classmethod
    def cancelled(cls, error: JobError | None = None) -> Ending:
        if error is not None:
            return cls.failed(error, JobStatus.cancelled)
        data = {"code": "cancelled", "message": "the job was cancelled"}
        return cls(JobStatus.cancelled, "error", data)


class Settlement:
    def __init__(
        self,
        jobs: JobStore,
        events: EventBus,
        meter: Meter,
        webhooks: WebhookSender,
        asset_url: Callable[[str], str],
    ) -> None:
        self._jobs, self._events, self._meter = jobs, events, meter
        self._webhooks, self._asset_url = webhooks, asset_url
        self.finished: Counter[str] = Counter()  # jobs settled since start, by status

    async def settle(
        self,
        job: Job,
        ending: Ending,
        now: float,
        *,
        expect: frozenset[JobStatus],
        usage: UsageRecord | None = None,
        holder: str | None = None,
    ) -> Job | None:
        """End ``job`` as ``ending`` if it is still in a status of ``expect`` (and, given
        ``holder``, its run is still held by it: a late replica's result is refused); the
        settled job, or None when another path ended it first (then nothing here happens)."""
        record = usage.to_dict() if usage is not None else None
        settled = await self._jobs.finish(
            job.id,
            ending.status,
            now,
            expect=expect,
            outputs=ending.outputs,
            error=ending.error,
            seed=ending.seed,
            extra={"usage": record} if record is not None else None,
            usage=usage,
            holder=holder,
        )
        if settled is None:
            return None
        await self._events.publish(job.id, ending.event, ending.data)
        await self._meter.settled(job.id, record)
        self.finished[settled.status.value] += 1
        if settled.webhook:
            progress, _ = await self._events.progress(job.id)
            await self._webhooks.send(
                settled.webhook,
                job_view(settled, None, progress, None, asset_url=self._asset_url),
                event_id=f"{settled.id}.{settled.status.value}",
            )
        return settled

    async def sync_request(self, request_id: str, usage: UsageRecord) -> None:
        """A sync request ended: its record is durable before this returns (the response goes
        out after it), then its budget is settled with it."""
        try:
            # Already logged: this very append ran and its reply was lost (a dropped
            # connection, retried): event ids are unique, so the record is in, once.
            with contextlib.suppress(UsageAlreadyLogged):
                await self._jobs.usage_log.append_usage(usage)
        finally:
            await self._meter.settled(request_id, usage.to_dict())

    async def dropped(self, key: str) -> None:
        """A request admitted against its budget that will never run (refused after the
        reservation, a repeat of an idempotent submit, no capacity): release its hold."""
        await self._meter.settled(key, None)

"""The async tier's use cases: submit a job, cancel it, read it (state, events, output)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from render_gateway.application.admission import Admission
from render_gateway.application.job_timeline import timeline
from render_gateway.application.job_views import job_view
from render_gateway.application.refusals import RateInfo, RefusalKind, Refused
from render_gateway.application.scheduler import JobRunner
from render_gateway.application.settle import (
    DEADLINE_EXCEEDED,
    QUEUED,
    Ending,
    Settlement,
    terminal_event,
)
from render_gateway.application.webhooks import WebhookSender
from render_gateway.auth.principal import Principal
from render_gateway.config import GatewayConfig
from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job, JobStatus
from render_gateway.core.lanes import Lane
from render_gateway.metering.work import work_of
from render_gateway.scheduling.backend_pool import BackendPool
from render_gateway.stores.events import EventBus, JobEvent
from render_gateway.stores.jobs import (
    CancelResult,
    IdempotencyConflict,
    JobFilter,
    JobStore,
    QueueFull,
    QueueSnapshot,
)
from render_gateway.stores.unavailable import StoreUnavailable
from render_gateway.url_policy import UrlRefused

# How often a ``Prefer: wait`` re-reads the job store: while the job is queued (no log yet),
# and while it follows the run's log (which wakes it at the end: this is only the backstop).
WAIT_QUEUED_RECHECK_S = 0.1
WAIT_RUNNING_RECHECK_S = 2.0


@dataclass(frozen=True)
class SubmitRequest:
    """A validated POST /queue body, as the use case needs it."""

    modality: str
    family: str
    model: str
    task: str
    format: str | None
    backend: str | None
    priority: str
    webhook: str | None
    ttl: float | None
    idempotency_key: str | None
    generation: dict[str, Any]  # the generation fields (asset inputs already admitted)
    digest_source: dict[str, Any]  # the whole body, for "same key, same body?"
    start_deadline: float | None = None  # seconds: a job not started by then is cancelled
    webhook_events: tuple[str, ...] | None = None  # what the webhook hears (job_webhooks.py)
    # An explicit width × height instead of a format (the OpenAI video route's ``size``):
    # checked against the model's side limits and forwarded as ``width``/``height``.
    size: tuple[int, int] | None = None


def expiry_of(
    now: float, ttl: float | None, start_deadline: float | None
) -> tuple[float | None, dict[str, str]]:
    """``expires_at`` of a job (the earlier of its ttl and its start deadline: either way a job
    still queued then ends cancelled, unbilled) and the extra field that says which it was."""
    ttl_at = now + ttl if ttl else None
    deadline_at = now + start_deadline if start_deadline else None
    if deadline_at is not None and (ttl_at is None or deadline_at <= ttl_at):
        return deadline_at, {"expiry_code": DEADLINE_EXCEEDED}
    return ttl_at, {}


@dataclass(frozen=True)
class Submitted:
    job: Job
    position: int | None
    eta_seconds: float | None
    rate: RateInfo


class CancelOutcome(StrEnum):
    """What a DELETE achieved."""

    cancelled = "cancelled"  # it was queued: it is now cancelled
    stopping = "stopping"  # its run got the cancel and will settle as cancelled
    # Running, but no run answered (its process may have died): the cancel is kept on the job,
    # which is cancelled instead of run again when its run is recovered.
    recorded = "recorded"


class JobCases:
    def __init__(
        self,
        config: GatewayConfig,
        admission: Admission,
        jobs: JobStore,
        events: EventBus,
        settlement: Settlement,
        runner: JobRunner,
        pool: BackendPool,
        webhooks: WebhookSender,
        asset_url: Callable[[str], str],
    ) -> None:
        self._config, self._admission, self._jobs = config, admission, jobs
        self._events, self._settlement, self._runner = events, settlement, runner
        self._pool, self._webhooks, self._asset_url = pool, webhooks, asset_url

    # ------------------------------------------------------------------ submit

    async def submit(self, body: SubmitRequest, principal: Principal, request_id: str) -> Submitted:
        admission = self._admission
        entry = admission.route(body.modality, body.family, body.model, body.task)
        family, model = entry.family, entry.model
        generation = admission.generation(body.task, body.generation)
        if body.size is None:
            format_name = admission.format(entry, body.task, body.format)
        else:
            admission.size(entry, body.task, *body.size)
            format_name = None
            generation = {**generation, "width": body.size[0], "height": body.size[1]}
        admission.backend(family, model, body.backend)
        if body.webhook is not None:
            try:  # the customer hears now, not when the webhook would fail
                await self._webhooks.check(body.webhook)
            except UrlRefused as exc:
                raise Refused(
                    RefusalKind.invalid, "invalid_request", f"webhook: {exc}", {"field": "webhook"}
                ) from None
        plan = admission.plan(principal)
        if body.priority == "high" and not plan.allow_high_priority:
            raise Refused(
                RefusalKind.forbidden,
                "priority_not_allowed",
                f"plan {principal.plan!r} cannot use priority 'high'",
            )
        rate = await admission.rate(principal)
        routing = {
            "modality": body.modality,
            "family": family,
            "model": model,
            "task": body.task,
            "format": format_name,
            "backend": body.backend,
            "generation": generation,
        }
        now = time.time()
        digest = hashlib.sha256(
            orjson.dumps(body.digest_source, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        job_id = new_job_id()
        expiry = expiry_of(now, body.ttl, body.start_deadline)
        work = work_of(body.modality, family, model, body.task, format_name, generation)
        reservation = await admission.budget(job_id, principal, work, now)
        job = Job(
            id=job_id,
            customer_id=principal.customer_id,
            lane=Lane.parse(body.priority),
            request=routing,
            created_at=now,
            idempotency_key=body.idempotency_key,
            request_digest=digest,
            expires_at=expiry[0],
            webhook=body.webhook,
            extra={
                **expiry[1],
                **(
                    {}
                    if body.webhook_events is None
                    else {"webhook_events": list(body.webhook_events)}
                ),
                "request_id": request_id,
                "plan": principal.plan,
                "reservation": {
                    "gpu_seconds": reservation.amount.gpu_seconds,
                    "cost_nanos": reservation.amount.cost_nanos,
                    "month": reservation.month,
                    "work": work.to_dict(),
                },
            },
        )
        try:
            stored, created = await self._jobs.submit(
                job,
                max_queued_for_customer=plan.max_queued_jobs,
                max_queued_total=self._config.max_queued_jobs,
            )
        except QueueFull as exc:
            await self._settlement.dropped(job_id)
            if exc.kind == "customer":
                quota = f"at most {plan.max_queued_jobs} queued jobs per customer"
                raise Refused(
                    RefusalKind.too_many, "queue_quota", quota, retry_after_seconds=5
                ) from exc
            raise Refused(
                RefusalKind.too_many, "queue_full", "the queue is full", retry_after_seconds=5
            ) from exc
        except IdempotencyConflict as exc:
            await self._settlement.dropped(job_id)
            raise Refused(
                RefusalKind.conflict, "idempotency_conflict", str(exc), {"job_id": exc.existing.id}
            ) from exc
        except BaseException:
            await self._settlement.dropped(job_id)
            raise
        if not created:  # the same request again: the first job holds the reservation
            await self._settlement.dropped(job_id)
        self._runner.wake()
        position = await self._jobs.position(stored.id)
        return Submitted(stored, position, self.eta_seconds(stored, position), rate)

    # ------------------------------------------------------------------ cancel

    async def cancel(self, job_id: str, principal: Principal) -> CancelOutcome:
        """Cancel the caller's job; not_found / conflict refusals for what cannot be."""
        for _ in range(3):  # a queued job claimed at this very moment is cancelled as running
            result = await self._jobs.request_cancel(job_id, principal.customer_id)
            if result is CancelResult.not_found:
                raise Refused(RefusalKind.not_found, "job_not_found", f"no job {job_id!r}")
            if result is CancelResult.terminal:
                raise Refused(
                    RefusalKind.conflict, "job_finished", f"job {job_id} has already finished"
                )
            if result is CancelResult.queued:
                job = await self._jobs.get(job_id)
                if job is not None and await self._settlement.settle(
                    job, Ending.cancelled(), time.time(), expect=QUEUED
                ):
                    return CancelOutcome.cancelled
                continue  # claimed or ended meanwhile: ask again
            # Running: the store has recorded the cancel; tell the run, wherever it is.
            stopped = await self._events.request_cancel(job_id)
            return CancelOutcome.stopping if stopped else CancelOutcome.recorded
        raise Refused(RefusalKind.conflict, "job_busy", f"job {job_id} is changing state; retry")

    # ------------------------------------------------------------------ reads

    async def owned(self, job_id: str, principal: Principal) -> Job:
        job = (
            await self._jobs.get(job_id) if job_id.startswith("j_") and len(job_id) <= 64 else None
        )
        if job is None or job.customer_id != principal.customer_id:
            # Others' jobs look absent.
            raise Refused(RefusalKind.not_found, "job_not_found", f"no job {job_id!r}")
        return job

    def eta_seconds(self, job: Job, position: int | None) -> float | None:
        if position is None:
            return None
        family, model = job.request["family"], job.request["model"]
        mean = self._runner.service_times.mean(family, model)
        capacity = sum(
            b.spec.capacity for b in self._pool.serving(family, model, job.request.get("backend"))
        )
        if mean is None or capacity == 0:
            return None
        return round(mean * (position + 1) / capacity, 3)

    async def position(self, job: Job) -> int | None:
        return await self._jobs.position(job.id) if job.status is JobStatus.queued else None

    async def view(self, job: Job) -> dict[str, Any]:
        position = await self.position(job)
        progress, _ = await self._events.progress(job.id)
        return job_view(
            job, position, progress, self.eta_seconds(job, position), asset_url=self._asset_url
        )

    def output_url(self, job: Job) -> str:
        return self._asset_url(self.output(job))

    @staticmethod
    def output(job: Job) -> str:
        """The asset id of the job's first output; conflict while it has none."""
        if job.status is not JobStatus.complete or not job.outputs:
            raise Refused(
                RefusalKind.conflict, "not_complete", f"job {job.id} is {job.status.value}"
            )
        return job.outputs[0]

    async def progress(self, job: Job) -> float:
        """0–1 from the run's step events: 1 once complete, 0 while queued."""
        if job.status is JobStatus.complete:
            return 1.0
        if job.status is JobStatus.queued:
            return 0.0
        progress, _ = await self._events.progress(job.id)
        return progress

    async def listed(
        self,
        where: JobFilter,
        *,
        after: str | None,
        limit: int,
        newest_first: bool,
        unknown_after: RefusalKind = RefusalKind.not_found,
    ) -> tuple[list[Job], bool]:
        """A cursor page of the jobs ``where`` matches and whether more follow; an ``after``
        outside its scope (another customer's job looks absent) is refused as
        ``unknown_after``. Who may read which customer's jobs is the caller's check."""
        try:
            jobs = await self._jobs.listed(
                where, after=after, limit=limit + 1, newest_first=newest_first
            )
        except KeyError:
            raise Refused(
                unknown_after, "job_not_found", f"after: no such job {after!r} to page after",
                {"field": "after"},
            ) from None  # fmt: skip
        return jobs[:limit], len(jobs) > limit

    async def timeline(self, job: Job) -> dict[str, Any]:
        """The job's events in order (application/job_timeline.py)."""
        return timeline(job, await self._events.log(job.id), self._asset_url)

    async def queue_snapshot(self) -> QueueSnapshot:
        return await self._jobs.queue_snapshot()

    async def refreshed(self, job: Job) -> Job:
        return await self._jobs.get(job.id) or job

    async def wait_for_end(self, job: Job, seconds: float) -> Job:
        """The job once it has ended, or as it is after ``seconds`` (``Prefer: wait``). Its
        event log wakes the wait when it has one; the job store is read again between, so an
        end whose event a crash cut short (settle.py's follow-ups) still ends the wait."""
        deadline = time.monotonic() + seconds
        current = job
        with contextlib.suppress(StoreUnavailable):  # the job is queued: answer as without wait
            current = await self._wait(job, deadline)
        return current

    async def _wait(self, job: Job, deadline: float) -> Job:
        current = job
        while not current.status.terminal:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not await self._events.has_log(job.id):  # queued: nothing to follow yet
                await asyncio.sleep(min(left, WAIT_QUEUED_RECHECK_S))
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, WAIT_RUNNING_RECHECK_S)):
                        async for event in self._events.follow(job.id):
                            if event.terminal:
                                break
            current = await self._jobs.get(job.id) or current
        return current

    async def has_events(self, job_id: str) -> bool:
        return await self._events.has_log(job_id)

    def follow(self, job_id: str, after: int) -> AsyncIterator[JobEvent]:
        return self._events.follow(job_id, after)

    def terminal_event(self, job: Job) -> list[tuple[str, dict[str, Any]]]:
        """The terminal event of a job that ended before this process knew of it (a restart,
        another replica), rebuilt from the job store."""
        rebuilt = terminal_event(job, self._asset_url)
        return [] if rebuilt is None else [rebuilt]

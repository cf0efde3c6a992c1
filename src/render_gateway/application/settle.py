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

Steps 2–4 (the follow-ups) come after the commit, so a process killed between them — or one
whose Redis went away just then — would lose them: followers waiting for an end that never
comes, a budget hold never settled, a webhook never sent. So the commit also lists the job as
*unfollowed* (``JobStore.unfollowed``), the follow-ups end by confirming it (``followed_up``),
and ``follow_up_missed`` — run by every replica's scheduler sweep — runs them again for jobs
that stayed unfollowed for ``FOLLOW_UP_GRACE_S``: the terminal event rebuilt from the job (a
log that has one already refuses it: ``LogEnded``), the budget settled from the record on the
job (settled at most once per key), the webhook enqueued under its one delivery id (enqueued
at most once). The sync tier has no job; ``sync_request`` appends its record and settles its
budget the same way, before the response is sent.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from render_gateway.application.job_webhooks import JobWebhooks
from render_gateway.application.webhooks import WebhookSender
from render_gateway.core.jobs import Job, JobError, JobStatus
from render_gateway.core.usage_records import UsageRecord
from render_gateway.metering.meter import Meter
from render_gateway.stores.events import EventBus, LogEnded
from render_gateway.stores.jobs import JobStore
from render_gateway.stores.unavailable import StoreUnavailable
from render_gateway.stores.usage_log import UsageAlreadyLogged

log = logging.getLogger(__name__)

QUEUED = frozenset({JobStatus.queued})
RUNNING = frozenset({JobStatus.running})
# How long a job may stay unfollowed before a sweep runs its follow-ups again: far above the
# milliseconds they take, so a sweep seldom repeats one still under way (harmless if it does).
FOLLOW_UP_GRACE_S = 10.0
FOLLOW_UP_BATCH = 100


def terminal_event(job: Job, asset_url: Callable[[str], str]) -> tuple[str, dict[str, Any]] | None:
    """The terminal event of an ended ``job``, rebuilt from the job store: what ``settle``
    published for it (None while it has not ended)."""
    if job.status is JobStatus.complete:
        urls = [asset_url(a) for a in job.outputs]
        return "complete", {"output": urls[0] if urls else None, "outputs": urls}
    if job.error is not None and job.status.terminal:
        return "error", {"code": job.error.code, "message": job.error.message}
    if job.status is JobStatus.cancelled:
        return "error", {"code": "cancelled", "message": "the job was cancelled"}
    return None


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


# A job that did not start before its start deadline (``start_deadline`` / ``Cancel-After``).
DEADLINE_EXCEEDED = "deadline_exceeded"


def expiry_ending(job: Job) -> Ending:
    """How a job past its ``expires_at`` before it ran ends: cancelled, unbilled, as its start
    deadline (when that is what set ``expires_at``) or its ttl."""
    if job.extra.get("expiry_code") == DEADLINE_EXCEEDED:
        message = "the job did not start before its start deadline"
        return Ending.failed(JobError(DEADLINE_EXCEEDED, message, False), JobStatus.cancelled)
    message = "the job's ttl passed while it was queued"
    return Ending.failed(JobError("ttl_expired", message, False), JobStatus.cancelled)


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
        self._asset_url = asset_url
        self.job_webhooks = JobWebhooks(webhooks, asset_url)  # the runs' start/progress too
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
        self.finished[settled.status.value] += 1
        try:
            await self._follow_up(settled, ending.event, ending.data, record)
        except StoreUnavailable:
            # The end is committed; what did not happen is done by follow_up_missed.
            log.warning("job %s: follow-ups cut short (a store is unreachable)", job.id)
        return settled

    async def _follow_up(
        self, job: Job, event: str, data: dict[str, Any], record: dict[str, Any] | None
    ) -> None:
        """Steps 2–4 for an ended job; each is idempotent, so running them twice is safe."""
        with contextlib.suppress(LogEnded):  # a follow-up that ran already published it
            await self._events.publish(job.id, event, data)
        await self._meter.settled(job.id, record)
        progress = (await self._events.progress(job.id))[0] if job.webhook else 0.0
        if not await self.job_webhooks.ended(job, progress):
            # Not stored (the store refused it, or too many are pending): the sweep tries again.
            log.warning("job %s: its webhook was not stored; a sweep sends it later", job.id)
            return
        await self._jobs.followed_up(job.id)

    async def follow_up_missed(self, now: float) -> int:
        """Run the follow-ups of the jobs that ended more than ``FOLLOW_UP_GRACE_S`` ago and are
        still unfollowed (their settling process died or lost a store midway); how many."""
        done = 0
        for job in await self._jobs.unfollowed(now - FOLLOW_UP_GRACE_S, FOLLOW_UP_BATCH):
            rebuilt = terminal_event(job, self._asset_url)
            if rebuilt is None:  # not ended (cannot be: finish listed it): nothing to follow
                await self._jobs.followed_up(job.id)
                continue
            usage = job.extra.get("usage")
            try:
                await self._follow_up(job, *rebuilt, usage if isinstance(usage, dict) else None)
            except StoreUnavailable:
                raise  # the rest would fail the same way: the next sweep tries again
            except Exception:
                # One job that cannot be followed up must not hold back the others behind it.
                log.exception("job %s: its missed follow-ups failed; tried again later", job.id)
                continue
            log.info("job %s: its missed follow-ups ran (event, budget, webhook)", job.id)
            done += 1
        return done

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

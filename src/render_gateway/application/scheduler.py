"""The scheduler loop: take the next queued job when a backend can run it, dispatch it, store
its outputs, settle it, and publish its events.

Strict priority, FIFO within a lane: the head of the queue waits for capacity on its own model
(head-of-line) rather than being overtaken. Every settled job carries its usage record, written
in the same commit as its final status.

A clean stop drains (``drain``): no job is claimed once the stop begins, running jobs get a
grace period to settle normally (billed as usual), and what is still running then is stopped on
its backend and put back in the queue with its retries unchanged, unbilled (the customer pays
for the run that completes; the stopped run's signed claim is kept on the job for operators).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from render_gateway.application.asset_inputs import inline_asset_inputs
from render_gateway.application.events import JobEventHub
from render_gateway.core.jobs import Job, JobError, JobStatus
from render_gateway.core.usage_records import UsageRecord
from render_gateway.inference.kserve_client import BackendError, BackendResult, Progress
from render_gateway.metering.meter import BUDGET_EXHAUSTED, Meter
from render_gateway.scheduling.backend_pool import BackendPool
from render_gateway.scheduling.dispatch import Dispatcher, DispatchOutcome, NoCapacity
from render_gateway.stores.assets import AssetStore
from render_gateway.stores.jobs import JobStore

log = logging.getLogger(__name__)


def generation_payload(request: dict[str, Any]) -> bytes:
    """The JSON the backend receives: the generation fields plus task and format."""
    payload = dict(request.get("generation", {}))
    payload["task"] = request["task"]
    if request.get("format"):
        payload["format"] = request["format"]
    return orjson.dumps(payload)


@dataclass
class ServiceTimes:
    """Moving average of run time per (family, model): the basis of ETAs."""

    alpha: float = 0.2

    def __post_init__(self) -> None:
        self._means: dict[tuple[str, str], float] = {}

    def observe(self, family: str, model: str, seconds: float) -> None:
        key = (family, model)
        previous = self._means.get(key)
        self._means[key] = (
            seconds if previous is None else previous + self.alpha * (seconds - previous)
        )

    def mean(self, family: str, model: str) -> float | None:
        return self._means.get((family, model))


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        pool: BackendPool,
        dispatcher: Dispatcher,
        assets: AssetStore,
        events: JobEventHub,
        meter: Meter,
        clock: Callable[[], float] = time.time,
        on_settled: Callable[[Job], None] = lambda _job: None,
        asset_url: Callable[[str], str] = lambda asset_id: f"/assets/{asset_id}",
    ) -> None:
        self._store, self._pool, self._dispatcher = store, pool, dispatcher
        self._asset_url = asset_url  # what the complete event hands out (a signed URL)
        self._meter = meter
        self._assets, self._events, self._clock = assets, events, clock
        self._on_settled = on_settled  # e.g. the job's webhook
        self._wake = asyncio.Event()
        self._cancels: dict[str, asyncio.Event] = {}
        self._budget_stopped: set[str] = set()  # running jobs stopped as their budget ran out
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping_since: float | None = None  # monotonic time the stop began
        self._drained: set[str] = set()  # jobs the drain stopped: requeued, not settled
        self.service_times = ServiceTimes()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="job-runner")
        self._sweeper = asyncio.create_task(self._sweep_expired(), name="ttl-sweeper")
        self.wake()

    def stop_claiming(self) -> None:
        """Take no more jobs from the queue; running ones go on. Safe to call from a signal
        handler (it only sets fields), so the stop begins the moment SIGTERM arrives."""
        if self._stopping_since is None:
            self._stopping_since = time.monotonic()

    async def drain(
        self, grace_seconds: float, cancel_wait_seconds: float = 10.0
    ) -> tuple[int, int]:
        """Stop taking work, let running jobs settle for up to ``grace_seconds`` after the stop
        began, then stop the rest on their backends and requeue them without spending a retry.
        Returns (jobs that settled during the drain, jobs requeued)."""
        self.stop_claiming()
        assert self._stopping_since is not None
        running = set(self._tasks)
        if running:
            left = self._stopping_since + grace_seconds - time.monotonic()
            await asyncio.wait(running, timeout=max(0.0, left))
        settled = sum(task.done() for task in running)
        stopped = list(self._cancels)  # the jobs still running here
        for job_id in stopped:
            self._drained.add(job_id)
            self._cancels[job_id].set()  # the backend stops at its next step and signs a claim
        if self._tasks:
            _, unanswered = await asyncio.wait(set(self._tasks), timeout=cancel_wait_seconds)
            for task in unanswered:
                task.cancel()
            for task in unanswered:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        requeued = 0
        for job_id in stopped:  # put back any whose backend never answered the cancel
            with contextlib.suppress(Exception):
                await self._store.requeue(job_id, {"requeued_by": "drain"})
            job = await self._store.get(job_id)
            requeued += job is not None and job.status is JobStatus.queued
        return settled, requeued

    async def stop(self) -> None:
        for task in (self._loop_task, self._sweeper, *self._tasks):
            if task is not None:
                task.cancel()
        for task in (self._loop_task, self._sweeper, *self._tasks):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    def cancel(self, job_id: str) -> bool:
        """Abort a running job's backend call; False if it is not running here."""
        event = self._cancels.get(job_id)
        if event is None:
            return False
        event.set()
        return True

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._start_what_fits()
            except Exception:  # never let one bad job stop the scheduler
                log.exception("scheduler pass failed")
                await asyncio.sleep(0.5)
                self.wake()

    async def _start_what_fits(self) -> None:
        while self._stopping_since is None and (head := self._store.peek()) is not None:
            job = await self._store.get(head)
            if job is None:
                return
            request = job.request
            family, model, backend = request["family"], request["model"], request.get("backend")
            served = bool(self._pool.serving(family, model, backend))
            if served and not self._pool.free_slots(family, model, backend):
                return  # head-of-line: wait for a slot (runs ending, probes and a timer wake us)
            claimed = await self._store.claim_next(self._clock())
            if claimed is None:
                continue
            if not served:  # its backend left the configuration: fail it, do not block the queue
                message = f"no backend serves {family}/{model} any more"
                await self._settle_error(
                    claimed, self._clock(), JobError("backend_not_found", message, False)
                )
                continue
            self._cancels[claimed.id] = asyncio.Event()
            task = asyncio.create_task(self._run(claimed), name=f"job-{claimed.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job) -> None:
        request_id = str(job.extra.get("request_id", job.id))
        started = self._clock()
        self._events.publish(job.id, "started", {})

        def progress(event: Progress) -> None:
            self._events.publish(
                job.id, "progress", {"progress": round(event.progress, 6), "step": event.step}
            )
            elapsed = self._clock() - started
            if not self._meter.progress(
                job.id, event.step, event.steps, elapsed, event.gpu_seconds
            ):
                self._budget_stopped.add(job.id)  # its next step would cross the budget
                self._cancels[job.id].set()

        try:
            try:
                outcome = await self._dispatch_when_possible(job, request_id, progress)
            except BackendError as exc:
                await self._settle_error(job, started, JobError(exc.code, str(exc), exc.retriable))
            except Exception:
                log.exception("job %s failed in the gateway", job.id)
                # The customer gets a code; the exception (maybe with paths) is in the log.
                internal = JobError("internal", "internal error; see the gateway log", True)
                await self._settle_error(job, started, internal)
            else:
                drained = job.id in self._drained and job.id not in self._budget_stopped
                if outcome.cancelled and drained:
                    await self._put_back(job, outcome)
                else:
                    await self._settle(job, started, outcome)
        finally:
            self._cancels.pop(job.id, None)
            self._budget_stopped.discard(job.id)
            self.wake()

    async def _dispatch_when_possible(
        self, job: Job, request_id: str, progress: Callable[[Progress], None]
    ) -> DispatchOutcome:
        """Dispatch; if every slot went elsewhere meanwhile (the sync tier, a breaker probe),
        wait for one instead of failing the job."""
        request = job.request
        cancel = self._cancels[job.id]
        # Asset inputs become data: URIs here, once: a backend never fetches the gateway.
        payload = generation_payload(await inline_asset_inputs(self._assets, request))
        while True:
            try:
                return await self._dispatcher.run(
                    request["family"],
                    request["model"],
                    payload,
                    request_id,
                    progress,
                    cancel,
                    request.get("backend"),
                )
            except NoCapacity:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cancel.wait(), 0.2)

    async def _put_back(self, job: Job, outcome: DispatchOutcome) -> None:
        """A run the drain stopped: the job goes back in the queue, unbilled and with its
        retries unchanged; the backend's signed claim of the partial run stays on the job."""
        claim = dict(outcome.result.parameters)
        run = {
            "backend": outcome.backend_id or None,
            "ended_at": self._clock(),
            "gpu_seconds": claim.get("gpu_seconds"),
            "steps_completed": claim.get("steps_completed"),
            "usage_claim": claim.get("usage_claim"),
        }
        runs = [*job.extra.get("drained_runs", []), run]
        await self._store.requeue(job.id, {"drained_runs": runs, "requeued_by": "drain"})
        log.info("job %s stopped by the drain and requeued (%s)", job.id, run["gpu_seconds"])

    async def _settle(self, job: Job, started: float, outcome: DispatchOutcome) -> None:
        now = self._clock()
        result = outcome.result
        if not isinstance(result, BackendResult):
            # Stopped on request: by its owner, or by the budget (billed either way: the
            # backend's signed claim says what ran).
            error = (
                JobError(BUDGET_EXHAUSTED, "stopped: the monthly budget ran out", False)
                if job.id in self._budget_stopped
                else None
            )
            usage = self._usage(
                job, started, now, outcome.backend_id, result.parameters, "cancelled",
                error.code if error else None,
            )  # fmt: skip
            settled = await self._store.finish(
                job.id, JobStatus.cancelled, now, error=error,
                extra={"usage": usage.to_dict()}, usage=usage,
            )  # fmt: skip
            code, message = (
                (error.code, error.message) if error else ("cancelled", "the job was cancelled")
            )
            self._events.publish(job.id, "error", {"code": code, "message": message})
            self._on_settled(settled)
            return
        assets = [
            await self._assets.put(data, result.content_type, job.customer_id)
            for data in result.outputs
        ]
        seed = result.parameters.get("seed")
        usage = self._usage(job, started, now, outcome.backend_id, result.parameters, "success")
        settled = await self._store.finish(
            job.id,
            JobStatus.complete,
            now,
            outputs=tuple(a.id for a in assets),
            seed=seed if isinstance(seed, int) else None,
            extra={"usage": usage.to_dict()},
            usage=usage,
        )
        self.service_times.observe(job.request["family"], job.request["model"], now - started)
        urls = [self._asset_url(a.id) for a in assets]
        self._events.publish(
            job.id, "complete", {"output": urls[0] if urls else None, "outputs": urls}
        )
        self._on_settled(settled)

    async def _settle_error(self, job: Job, started: float, error: JobError) -> None:
        now = self._clock()
        usage = self._usage(job, started, now, "", {}, "error", error.code)
        settled = await self._store.finish(
            job.id, JobStatus.error, now, error=error, extra={"usage": usage.to_dict()}, usage=usage
        )
        self._events.publish(job.id, "error", {"code": error.code, "message": error.message})
        self._on_settled(settled)

    def _usage(
        self,
        job: Job,
        started: float,
        ended: float,
        backend_id: str,
        parameters: Any,
        outcome: Literal["success", "error", "cancelled"],
        error_code: str | None = None,
    ) -> UsageRecord:
        """The metering hook's record, persisted in the same commit as the final status."""
        request = job.request
        return self._meter.record(
            request_id=str(job.extra.get("request_id") or job.id),
            customer_id=job.customer_id,
            plan=str(job.extra.get("plan") or "default"),
            tier="async",
            modality=request["modality"],
            family=request["family"],
            model=request["model"],
            created_at=job.created_at,
            started_at=started,
            ended_at=ended,
            outcome=outcome,
            parameters=parameters,
            backend=backend_id or None,
            error_code=error_code,
            job_id=job.id,
        )

    async def _sweep_expired(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.wake()  # time alone can free capacity (a breaker turning half-open)
            try:
                for job_id in await self._store.expire(self._clock()):
                    self._events.publish(
                        job_id,
                        "error",
                        {"code": "ttl_expired", "message": "the ttl passed while queued"},
                    )
                    if (expired := await self._store.get(job_id)) is not None:
                        self._on_settled(expired)
            except Exception:
                log.exception("ttl sweep failed")

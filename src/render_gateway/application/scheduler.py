"""The scheduler loop: claim the next queued job when a backend can run it, dispatch it, store
its outputs, and hand its end to ``Settlement`` (settle.py), the one place a job ends.

Strict priority, FIFO within a lane: the head of the queue waits for capacity on its own model
(head-of-line) rather than being overtaken; the job store's ``claim`` decides that atomically
from the routes that have a slot free. A claimed job holds a run lease, renewed by a heartbeat;
a run whose lease lapsed (its process died) is recovered like a run found at start: requeued
(spending a retry) or failed, as ``recovery`` says. A cancel reaches the run over the event
bus, wherever the DELETE arrived.

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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from render_gateway.application.asset_inputs import inline_asset_inputs
from render_gateway.application.settle import (
    QUEUED,
    RUNNING,
    Ending,
    Settlement,
    expiry_ending,
)
from render_gateway.core.jobs import Job, JobError, JobStatus
from render_gateway.core.usage_records import UsageRecord
from render_gateway.formats import format_size
from render_gateway.inference.backend import BackendError, BackendResult, Progress
from render_gateway.metering.meter import BUDGET_EXHAUSTED, Meter
from render_gateway.scheduling.backend_pool import BackendPool
from render_gateway.scheduling.dispatch import Dispatcher, DispatchOutcome, NoCapacity
from render_gateway.stores.assets import AssetStore
from render_gateway.stores.events import EventBus
from render_gateway.stores.jobs import JobStore
from render_gateway.stores.unavailable import StoreUnavailable

log = logging.getLogger(__name__)


def generation_payload(request: dict[str, Any]) -> bytes:
    """The JSON the backend receives: the generation fields plus the task, and the catalog's
    format resolved to ``width``/``height`` (a Triton model cannot know Render's format
    names)."""
    payload = dict(request.get("generation", {}))
    payload["task"] = request["task"]
    if request.get("format"):
        payload["width"], payload["height"] = format_size(request["modality"], request["format"])
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


# How often a process's runs look for a cancel recorded on their jobs that their signal missed.
CANCEL_WATCH_SECONDS = 2.0


@dataclass(frozen=True)
class RunLeases:
    """How long a claimed run's lease lasts, how often it is renewed, who holds it."""

    holder: str
    seconds: float = 30.0

    @property
    def renew_every(self) -> float:
        return self.seconds / 3


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        pool: BackendPool,
        dispatcher: Dispatcher,
        assets: AssetStore,
        events: EventBus,
        meter: Meter,
        settlement: Settlement,
        leases: RunLeases,
        *,
        requeue_lost_runs: bool = True,
        max_retries: int = 2,
        clock: Callable[[], float] = time.time,
        asset_url: Callable[[str], str] = lambda asset_id: f"/assets/{asset_id}",
    ) -> None:
        self._store, self._pool, self._dispatcher = store, pool, dispatcher
        self._asset_url = asset_url  # what the complete event hands out (a signed URL)
        self._meter, self._settlement, self._leases = meter, settlement, leases
        self._requeue_lost, self._max_retries = requeue_lost_runs, max_retries
        self._assets, self._events, self._clock = assets, events, clock
        self._wake = asyncio.Event()
        self._cancels: dict[str, asyncio.Event] = {}  # the runs of this process, by job id
        self._budget_stopped: set[str] = set()  # running jobs stopped as their budget ran out
        self._lost: set[str] = set()  # runs whose lease another process took: not ours to end
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping_since: float | None = None  # monotonic time the stop began
        self._drained: set[str] = set()  # jobs the drain stopped: requeued, not settled
        self.service_times = ServiceTimes()

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._loop(), name="job-runner"),
            asyncio.create_task(self._sweep(), name="job-sweeper"),
            asyncio.create_task(self._heartbeat(), name="run-heartbeat"),
            asyncio.create_task(self._watch_cancels(), name="run-cancel-watch"),
        ]
        self.wake()

    async def recover(self, lost: Iterable[Job]) -> tuple[int, int]:
        """Runs that ended with their process (found at start, or leases that lapsed): requeue
        each (one retry spent) while it has retries left and ``recovery`` is ``requeue``;
        otherwise fail it as ``interrupted`` (retriable), through the settlement like any end.
        A run whose owner asked to cancel it is cancelled instead. Returns (requeued, failed)."""
        requeued = failed = 0
        for job in lost:
            now = self._clock()
            # Fenced by the holder whose run was lost: if another replica recovered and claimed
            # the job meanwhile, its new run is not touched.
            fence = job.run_holder
            if job.cancel_requested:
                await self._settlement.settle(
                    job, Ending.cancelled(), now, expect=RUNNING, holder=fence
                )
            elif self._requeue_lost and job.retries < self._max_retries:
                if await self._store.requeue(job.id, count_retry=True, holder=fence) is not None:
                    requeued += 1
            else:
                interrupted = JobError(
                    "interrupted", "the gateway stopped while the job was running", True
                )
                usage = self._usage(job, job.started_at or now, now, "", {}, "error", "interrupted")
                ended = await self._settlement.settle(
                    job, Ending.failed(interrupted), now, expect=RUNNING, usage=usage,
                    holder=fence,
                )  # fmt: skip
                failed += ended is not None
        if requeued:
            self.wake()
        return requeued, failed

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
                await self._store.requeue(
                    job_id, extra={"requeued_by": "drain"}, count_retry=False,
                    holder=self._leases.holder,
                )  # fmt: skip
            job = await self._store.get(job_id)
            requeued += job is not None and job.status is JobStatus.queued
        return settled, requeued

    async def stop(self) -> None:
        for task in (*self._loops, *self._tasks):
            task.cancel()
        for task in (*self._loops, *self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self._tasks)

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
        while self._stopping_since is None:
            runnable, served = self._pool.route_keys()
            claimed = await self._store.claim(
                self._clock(),
                runnable=runnable,
                served=served,
                holder=self._leases.holder,
                lease_seconds=self._leases.seconds,
            )
            if claimed is None:
                return  # empty, or head-of-line: runs ending, probes and a timer wake us
            request = claimed.request
            family, model, backend = request["family"], request["model"], request.get("backend")
            if claimed.cancel_requested:  # cancelled while its earlier run was being recovered
                await self._settlement.settle(
                    claimed, Ending.cancelled(), self._clock(), expect=RUNNING,
                    holder=self._leases.holder,
                )  # fmt: skip
                continue
            if claimed.expires_at is not None and claimed.expires_at <= self._clock():
                # Past its start deadline (or ttl) before the sweep saw it: it must not start.
                await self._settlement.settle(
                    claimed, expiry_ending(claimed), self._clock(), expect=RUNNING,
                    holder=self._leases.holder,
                )  # fmt: skip
                continue
            if not self._pool.serving(family, model, backend):
                # Its backend left the configuration: fail it, do not block the queue.
                message = f"no backend serves {family}/{model} any more"
                await self._end_with_error(
                    claimed, self._clock(), JobError("backend_not_found", message, False)
                )
                continue
            cancel = self._cancels[claimed.id] = self._events.listen_cancel(claimed.id)
            # A DELETE that came between the claim and the listening above found no run: it
            # is on the job (request_cancel records it), so look once more.
            try:
                fresh = await self._store.get(claimed.id)
            except StoreUnavailable:  # the job is claimed and ours: run it (a cancel that came
                fresh = None  # meanwhile reaches it through the listener, or at its settling)
            if fresh is not None and fresh.cancel_requested:
                cancel.set()
            first_try = asyncio.Event()
            task = asyncio.create_task(self._run(claimed, first_try), name=f"job-{claimed.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            # The next claim waits until this job holds its slot (or found none free): the
            # claim counted that slot free, and claiming again before it is taken would claim
            # more jobs than there are slots. Those would wait for a slot while "running",
            # out of their lanes' order, and their wait would be counted as inference time.
            holding = asyncio.ensure_future(first_try.wait())
            await asyncio.wait({task, holding}, return_when=asyncio.FIRST_COMPLETED)
            holding.cancel()

    async def _run(self, job: Job, first_try: asyncio.Event) -> None:
        request_id = str(job.extra.get("request_id", job.id))
        started = self._clock()
        if isinstance(reservation := job.extra.get("reservation"), dict):
            plan = str(job.extra.get("plan") or "default")
            self._meter.adopt(job.id, job.customer_id, plan, reservation)
        # Events are for watchers: a store that is unreachable (Redis down) loses one, never
        # the run. The outcome is written again until the store takes it (``_until_stored``).
        with contextlib.suppress(StoreUnavailable):
            await self._events.publish(job.id, "started", {})
        notify = self._settlement.job_webhooks
        notify.started(job)

        async def progress(event: Progress) -> None:
            with contextlib.suppress(StoreUnavailable):
                await self._events.publish(
                    job.id, "progress", {"progress": round(event.progress, 6), "step": event.step}
                )
            notify.progressed(job, event.progress, event.step)
            elapsed = self._clock() - started
            # The budget store unreachable: the meter lets the run go as far as its hold covers.
            allowed = await self._meter.progress(
                job.id, event.step, event.steps, elapsed, event.gpu_seconds
            )
            if not allowed:
                self._budget_stopped.add(job.id)  # its next step would cross the budget
                self._cancels[job.id].set()

        try:
            try:
                outcome = await self._dispatch_when_possible(job, request_id, progress, first_try)
            except BackendError as exc:
                error = JobError(exc.code, str(exc), exc.retriable)
                failed_on = exc.backend_id or ""
                await self._until_stored(
                    job.id, lambda: self._end_with_error(job, started, error, failed_on)
                )
            except Exception:
                log.exception("job %s failed in the gateway", job.id)
                # The customer gets a code; the exception (maybe with paths) is in the log.
                internal = JobError("internal", "internal error; see the gateway log", True)
                await self._until_stored(
                    job.id, lambda: self._end_with_error(job, started, internal)
                )
            else:
                drained = job.id in self._drained and job.id not in self._budget_stopped
                if job.id in self._lost:
                    log.warning(
                        "job %s: its run lease was lost; another process recovers it", job.id
                    )
                elif outcome.cancelled and drained:
                    await self._until_stored(job.id, lambda: self._put_back(job, outcome))
                else:
                    await self._until_stored(job.id, lambda: self._end(job, started, outcome))
        finally:
            self._cancels.pop(job.id, None)
            notify.forget(job.id)
            self._events.stop_listening(job.id)
            self._budget_stopped.discard(job.id)
            self._lost.discard(job.id)
            self.wake()

    async def _until_stored(self, job_id: str, write: Callable[[], Awaitable[None]]) -> None:
        """Write a run's outcome, again and again while the store is unreachable (Redis down
        or loading): the result is known and the job still this process's (the heartbeat
        renews its lease once the store is back); giving up would leave it running until
        its lease lapsed and then run it again."""
        delay = 0.5
        while True:
            try:
                await write()
                return
            except StoreUnavailable:
                log.warning(
                    "job %s: the store is unreachable; writing its outcome again in %.1f s",
                    job_id, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)

    async def _dispatch_when_possible(
        self,
        job: Job,
        request_id: str,
        progress: Callable[[Progress], Any],
        first_try: asyncio.Event,
    ) -> DispatchOutcome:
        """Dispatch; if every slot went elsewhere meanwhile (the sync tier, a breaker probe),
        wait for one instead of failing the job. However it ends, its slot is free once this
        returns: the next job is claimed then, and runs while this one stores its outcome
        (its outputs, its usage record), so a backend does not idle for the gateway's writes —
        a job counts as running until it is stored, so ``running`` may exceed the slots by
        the jobs being stored."""
        request = job.request
        cancel = self._cancels[job.id]
        try:
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
                        first_try,
                    )
                except NoCapacity:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(cancel.wait(), 0.2)
        finally:
            self.wake()

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
        extra = {"drained_runs": runs, "requeued_by": "drain"}
        await self._store.requeue(
            job.id, extra=extra, count_retry=False, holder=self._leases.holder
        )
        log.info("job %s stopped by the drain and requeued (%s)", job.id, run["gpu_seconds"])

    async def _end(self, job: Job, started: float, outcome: DispatchOutcome) -> None:
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
                error.code if error else None, result.attributed_seconds,
            )  # fmt: skip
            await self._settlement.settle(
                job, Ending.cancelled(error), now, expect=RUNNING, usage=usage,
                holder=self._leases.holder,
            )  # fmt: skip
            return
        assets = [
            await self._assets.put(data, result.content_type, job.customer_id)
            for data in result.outputs
        ]
        # The seed that ran: the backend's echo, else the one the gateway sent (admission.py).
        seed = result.parameters.get("seed", job.request.get("generation", {}).get("seed"))
        usage = self._usage(
            job, started, now, outcome.backend_id, result.parameters, "success",
            attributed_seconds=result.attributed_seconds,
        )  # fmt: skip
        urls = [self._asset_url(a.id) for a in assets]
        ending = Ending(
            JobStatus.complete,
            "complete",
            {"output": urls[0] if urls else None, "outputs": urls},
            outputs=tuple(a.id for a in assets),
            seed=seed if isinstance(seed, int) else None,
        )
        await self._settlement.settle(
            job, ending, now, expect=RUNNING, usage=usage, holder=self._leases.holder
        )
        self.service_times.observe(job.request["family"], job.request["model"], now - started)

    async def _end_with_error(
        self, job: Job, started: float, error: JobError, backend_id: str = ""
    ) -> None:
        now = self._clock()
        usage = self._usage(job, started, now, backend_id, {}, "error", error.code)
        await self._settlement.settle(
            job, Ending.failed(error), now, expect=RUNNING, usage=usage,
            holder=self._leases.holder,
        )  # fmt: skip

    def _usage(
        self,
        job: Job,
        started: float,
        ended: float,
        backend_id: str,
        parameters: Any,
        outcome: Literal["success", "error", "cancelled"],
        error_code: str | None = None,
        attributed_seconds: float | None = None,
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
            attributed_seconds=attributed_seconds,
        )

    async def _sweep(self) -> None:
        """Every second: queued jobs past their ttl end; runs whose lease lapsed (a process
        that died) are recovered; ended jobs whose follow-ups were cut short get them
        (Settlement.follow_up_missed); and time alone may free capacity (a half-open
        breaker)."""
        while True:
            await asyncio.sleep(1.0)
            self.wake()
            try:
                now = self._clock()
                for job_id in await self._store.expired_queued(now):
                    if (job := await self._store.get(job_id)) is not None:
                        await self._settlement.settle(job, expiry_ending(job), now, expect=QUEUED)
                lapsed = [
                    j for j in await self._store.expired_runs(now) if j.id not in self._cancels
                ]
                if lapsed:
                    await self.recover(lapsed)
                await self._settlement.follow_up_missed(now)
            except StoreUnavailable:
                log.warning("sweep: a store is unreachable; sweeping again in a second")
            except Exception:
                log.exception("sweep failed")

    async def _watch_cancels(self, every: float = CANCEL_WATCH_SECONDS) -> None:
        """The backstop of the cancel signal: a customer's cancel is durable on the job
        (``request_cancel``), and signalled to the run over the event bus; a signal lost on the
        way (a pub/sub message dropped while a replica reconnected to Redis) would leave the
        run going to its end. So the runs of this process read their jobs' flags now and then,
        and stop the ones marked: a DELETE on any replica stops the run within ``every``."""
        while True:
            await asyncio.sleep(every)
            for job_id in list(self._cancels):
                try:
                    job = await self._store.get(job_id)
                except Exception:
                    log.warning("cancel watch: reading job %s failed", job_id, exc_info=True)
                    break
                cancel = self._cancels.get(job_id)
                if job is not None and job.cancel_requested and cancel is not None:
                    if not cancel.is_set():
                        log.info("job %s: a cancel recorded on the job stops its run", job_id)
                    cancel.set()

    async def _heartbeat(self) -> None:
        """Renew the leases of this process's runs; a run whose lease was lost (this process
        stalled past it and another recovered the job) is stopped, and not settled here."""
        while True:
            await asyncio.sleep(self._leases.renew_every)
            ours = list(self._cancels)
            if not ours:
                continue
            try:
                held = await self._store.heartbeat(
                    ours, self._leases.holder, self._clock(), self._leases.seconds
                )
            except Exception:
                log.exception("run heartbeat failed")
                continue
            for job_id in ours:
                if job_id not in held and job_id in self._cancels:
                    self._lost.add(job_id)
                    self._cancels[job_id].set()

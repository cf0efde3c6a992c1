"""In-flight runs: capacity slots, cancellation, progress and the signed usage claim.

A run takes one of its model's ``max_concurrency`` slots or is refused at once (the gateway
queues; a backend never hides a queue). The slot is released when the pipeline thread has
really stopped — after success, failure or cancellation — never earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from render_gateway.generation import MAX_SEED, GenerationRequest
from render_gateway.signing_keys import key_id
from render_gateway.usage_claim import SignedClaim, UsageClaim
from render_gateway.worker.claim_signer import ClaimSigner
from render_gateway.worker.devices import DeviceIdentity, Measurement, metered
from render_gateway.worker.media import RemoteImagePolicy, load_image
from render_gateway.worker.pipelines import Encoded, LoadedModel, RunCancelled, RunPlan

log = logging.getLogger(__name__)


class ModelBusy(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"all slots are busy; retry in {retry_after}s")
        self.retry_after = retry_after


class DuplicateRequest(Exception):
    pass


class RunFailed(Exception):
    """The pipeline raised. ``rejected_input``: it raised before its first step a value/type/
    lookup error (its own input checks refused the request), or anything while the caller's own
    pass-through fields were among its arguments: a 400, not a server fault."""

    def __init__(self, message: str, steps_completed: int, rejected_input: bool) -> None:
        super().__init__(message)
        self.steps_completed = steps_completed
        self.rejected_input = rejected_input


_INPUT_ERRORS = (ValueError, TypeError, IndexError, KeyError)


@dataclass(frozen=True)
class Progress:
    step: int
    steps: int
    gpu_seconds: float = 0.0  # device time of the run so far (see devices.Measurement.so_far)
    preview: bytes | None = None  # PNG of the run's latents after this step, when asked for

    @property
    def fraction(self) -> float:
        return self.step / self.steps if self.steps else 0.0


@dataclass(frozen=True)
class RunOutcome:
    status: Literal["complete", "cancelled"]
    outputs: list[bytes]
    content_type: str
    plan: RunPlan
    measurement: Measurement
    steps_completed: int
    output_blake3: tuple[str, ...]
    claim: SignedClaim
    encode_seconds: float


@dataclass
class Duration:
    """Triton's ``StatisticDuration``: how many, and their summed nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += max(0, ns)


@dataclass
class InferenceStats:
    """Triton's ``InferStatistics``, measured per request. The stages of a completed run:
    ``compute_input`` arrival to inputs ready (decode, validate, plan, fetch images),
    ``queue`` inputs ready to slot taken (the worker never queues: near zero),
    ``compute_infer`` the pipeline call, ``compute_output`` PNG/MP4 encoding.
    ``success`` and ``fail`` time each request from arrival to its outcome."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelSlots:
    """Capacity bookkeeping for one model; touched only on the event loop thread."""

    model: LoadedModel
    executor: ThreadPoolExecutor
    in_flight: int = 0  # runs holding a device slot
    active: int = 0  # runs not yet finished (holding a slot, or encoding their output)
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    rejected_busy: int = 0
    steps_executed: int = 0
    stats: InferenceStats = field(default_factory=InferenceStats)
    last_inference_ms: int = 0  # when the last run ended, ms since the epoch (0: none yet)
    # Moving average of a run's wall time, for Retry-After; None until a run has finished.
    mean_run_seconds: float | None = None

    @property
    def capacity(self) -> int:
        return self.model.config.max_concurrency

    def observe(self, seconds: float) -> None:
        alpha = 0.2
        previous = self.mean_run_seconds
        self.mean_run_seconds = (
            seconds if previous is None else (1 - alpha) * previous + alpha * seconds
        )

    def retry_after(self) -> int:
        return max(1, math.ceil(self.mean_run_seconds or 1.0))


@dataclass
class Run:
    request_id: str
    model_name: str
    plan: RunPlan
    cancel_event: threading.Event
    events: asyncio.Queue[Progress | None]
    future: asyncio.Future[RunOutcome] = field(init=False)
    holds_slot: bool = True  # until the pipeline call returns, or the run ends otherwise
    # perf_counter_ns marks for the statistics: the request's arrival at the transport, its
    # inputs being ready, and the slot being taken.
    arrived_ns: int = 0
    inputs_ready_ns: int = 0
    slot_taken_ns: int = 0

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def done(self) -> bool:
        return self.future.done()


def _now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RunService:
    def __init__(
        self,
        device: DeviceIdentity,
        signing_key: Ed25519PrivateKey,
        remote_images: RemoteImagePolicy,
        claim_window_seconds: float = 0.002,
        claim_window_max: int = 1024,
    ) -> None:
        self.device = device
        self.claims = ClaimSigner(signing_key, claim_window_seconds, claim_window_max)
        self._key_id = key_id(signing_key.public_key())
        self._remote_images = remote_images
        self.models: dict[str, ModelSlots] = {}
        self._runs: dict[str, Run] = {}

    def add_model(self, model: LoadedModel) -> None:
        executor = ThreadPoolExecutor(
            # Twice the slots: a run that is only encoding its output holds a thread, not a slot.
            max_workers=2 * model.config.max_concurrency,
            thread_name_prefix=f"run-{model.name}",
        )
        self.models[model.name] = ModelSlots(model=model, executor=executor)

    def shutdown(self) -> None:
        for run in self._runs.values():
            run.cancel()
        for slots in self.models.values():
            slots.executor.shutdown(wait=True, cancel_futures=True)

    def get_run(self, request_id: str) -> Run | None:
        return self._runs.get(request_id)

    async def start(
        self,
        model_name: str,
        request: GenerationRequest,
        request_id: str,
        arrived_ns: int | None = None,
    ) -> Run:
        """Validate, fetch references, take a slot and start the run (KeyError: no model).
        ``arrived_ns``: ``time.perf_counter_ns()`` when the transport received the request."""
        arrived_ns = time.perf_counter_ns() if arrived_ns is None else arrived_ns
        slots = self.models[model_name]
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        plan = slots.model.plan(request, seed)
        images: dict[str, Image.Image] = {}
        if request.image is not None:
            images["image"] = await load_image(request.image, "image", self._remote_images)
        if request.mask is not None:
            images["mask"] = await load_image(request.mask, "mask", self._remote_images)
        inputs_ready_ns = time.perf_counter_ns()
        if request_id in self._runs:
            raise DuplicateRequest(f"request {request_id} is already running")
        if slots.in_flight >= slots.capacity:
            slots.rejected_busy += 1
            raise ModelBusy(slots.retry_after())
        slots.in_flight += 1
        slots.active += 1
        loop = asyncio.get_running_loop()
        run = Run(request_id, model_name, plan, threading.Event(), asyncio.Queue())
        run.arrived_ns, run.inputs_ready_ns = arrived_ns, inputs_ready_ns
        run.slot_taken_ns = time.perf_counter_ns()

        def on_step(step: int, steps: int, gpu_seconds: float, preview: bytes | None) -> None:
            progress = Progress(step, steps, gpu_seconds, preview)
            loop.call_soon_threadsafe(run.events.put_nowait, progress)

        def release_slot() -> None:
            loop.call_soon_threadsafe(self._release_slot, slots, run)

        run.future = loop.run_in_executor(
            slots.executor, self._execute, slots.model, run, images, on_step, release_slot
        )
        self._runs[request_id] = run
        # Start and end of every run in the worker's own log: what an operator (and the chaos
        # test) reads to see that one request never ran on two workers at once.
        log.info("run %s started", request_id)
        run.future.add_done_callback(lambda _f: self._finished(slots, run))
        return run

    @staticmethod
    def _release_slot(slots: ModelSlots, run: Run) -> None:
        if run.holds_slot:
            run.holds_slot = False
            slots.in_flight -= 1

    def _finished(self, slots: ModelSlots, run: Run) -> None:
        self._release_slot(slots, run)
        slots.active -= 1
        self._runs.pop(run.request_id, None)
        log.info("run %s ended", run.request_id)
        run.events.put_nowait(None)
        slots.last_inference_ms = time.time_ns() // 1_000_000
        elapsed_ns = time.perf_counter_ns() - run.arrived_ns
        if run.future.cancelled():
            slots.failed += 1
            slots.stats.fail.add(elapsed_ns)
            return
        error = run.future.exception()
        if error is not None:
            slots.failed += 1
            slots.stats.fail.add(elapsed_ns)
            if isinstance(error, RunFailed):
                slots.steps_executed += error.steps_completed
            return
        outcome = run.future.result()
        slots.steps_executed += outcome.steps_completed
        if outcome.status == "cancelled":
            slots.cancelled += 1
        else:
            slots.completed += 1
            stats = slots.stats
            stats.success.add(elapsed_ns)
            stats.compute_input.add(run.inputs_ready_ns - run.arrived_ns)
            stats.queue.add(run.slot_taken_ns - run.inputs_ready_ns)
            stats.compute_infer.add(int(outcome.measurement.wall_seconds * 1e9))
            stats.compute_output.add(int(outcome.encode_seconds * 1e9))
            slots.observe(outcome.measurement.wall_seconds)

    # ------------------------------------------------------------- on the pipeline thread

    def _execute(
        self,
        model: LoadedModel,
        run: Run,
        images: dict[str, Image.Image],
        on_step: Callable[[int, int, float, bytes | None], None],
        release_slot: Callable[[], None],
    ) -> RunOutcome:
        steps_seen = 0

        def report(step: int, steps: int, gpu_seconds: float, preview: bytes | None) -> None:
            nonlocal steps_seen
            steps_seen = step
            on_step(step, steps, gpu_seconds, preview)

        status: Literal["complete", "cancelled"] = "complete"

        def meter() -> AbstractContextManager[Measurement]:
            return metered(self.device, run.request_id)

        try:
            generated = model.generate(run.plan, images, run.cancel_event, report, meter)
        except RunCancelled as stop:
            status, steps_completed = "cancelled", stop.steps_completed
            measurement, encoded = stop.measurement, Encoded([], "application/octet-stream", 0.0)
        except Exception as exc:
            log.exception("run %s failed", run.request_id)
            # Before the first step: the pipeline's own input checks refused the request, or it
            # broke on an argument the caller passed through (e.g. clip_skip on a text encoder
            # that has no such layers): the request's fault either way, a 400.
            rejected = steps_seen == 0 and (
                isinstance(exc, _INPUT_ERRORS) or bool(run.plan.passed_keys)
            )
            raise RunFailed(f"{type(exc).__name__}: {exc}", steps_seen, rejected) from exc
        else:
            # The device is free once the pipeline returns: let the next run start on it
            # while this thread encodes.
            release_slot()
            steps_completed, measurement = generated.steps_completed, generated.measurement
            try:
                encoded = model.encode(generated, run.plan)
            except Exception as exc:
                log.exception("run %s: encoding the output failed", run.request_id)
                message = f"encoding failed: {type(exc).__name__}: {exc}"
                raise RunFailed(message, steps_seen, rejected_input=False) from exc
            del generated
        # The claim's interval is the metered one (a run cancelled before it began has none).
        started = measurement.started_at or _now()
        ended = measurement.ended_at or started
        digests = tuple(blake3.blake3(o).hexdigest() for o in encoded.outputs)
        claim = UsageClaim(
            request_id=run.request_id,
            model=model.name,
            device_uuid=self.device.uuid,
            device_kind=self.device.kind,
            gpu_seconds=round(measurement.seconds, 6),
            started_at=_rfc3339(started),
            ended_at=_rfc3339(ended),
            seed=run.plan.seed,
            output_blake3=digests,
            status=status,
            steps_completed=steps_completed,
            key_id=self._key_id,
        )
        return RunOutcome(
            status=status,
            outputs=encoded.outputs,
            content_type=encoded.content_type,
            plan=run.plan,
            measurement=measurement,
            steps_completed=steps_completed,
            output_blake3=digests,
            # Signed with the claims that finish within the same window (claim_signer.py).
            claim=self.claims.sign(claim),
            encode_seconds=encoded.seconds,
        )


async def wait_for(run: Run) -> RunOutcome:
    """Await a run's outcome, shielding it: cancelling the waiter must not orphan the thread."""
    return await asyncio.shield(run.future)


def consume_exception(run: Run) -> None:
    """Mark a finished run's exception as retrieved (for runs whose caller went away)."""
    if run.future.done() and not run.future.cancelled():
        with contextlib.suppress(Exception):
            run.future.exception()

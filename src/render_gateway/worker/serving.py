"""The worker's serving path without a transport: what HTTP routes and the gRPC servicer share.

Both transports turn their message into a ``codec.InferRequest`` (or a generation JSON), and
from there everything is here: input checks, starting a run on the ``RunService``, waiting for
its outcome (cancelling it when the caller goes away), the response and its parameters, the
model's metadata, Triton-shaped config and statistics. Failures are ``ApiError`` (an HTTP
status and a Render code), which each transport renders in its own form.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from render_gateway import __version__
from render_gateway.core.ids import is_valid_request_id, new_request_id
from render_gateway.generation import GenerationRequest, describe_validation_error
from render_gateway.kserve import codec
from render_gateway.worker.devices import DeviceIdentity
from render_gateway.worker.errors import ApiError
from render_gateway.worker.media import MediaError
from render_gateway.worker.pipelines import LoadedModel, PlanError
from render_gateway.worker.runs import (
    DuplicateRequest,
    Duration,
    ModelBusy,
    ModelSlots,
    Progress,
    Run,
    RunFailed,
    RunOutcome,
    consume_exception,
    wait_for,
)
from render_gateway.worker.state import MODEL_VERSION, WorkerState, find_model, service_of

log = logging.getLogger(__name__)

REQUEST_INPUT = "request"
SERVER_NAME = "render-worker"
PLATFORM = "diffusers"
EXTENSIONS = [
    "binary_tensor_data",
    "statistics",
    "model_configuration",
    "generate",
    "generate_stream",
    "render_usage_claim",
    "render_cancel",
]


def output_name(model: LoadedModel) -> str:
    return "video" if model.modality == "video" else "images"


# ---------------------------------------------------------------------------- the request


def generation_request(raw: bytes | str | Any) -> GenerationRequest:
    try:
        if isinstance(raw, bytes | str):
            return GenerationRequest.model_validate_json(raw)
        return GenerationRequest.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(400, "invalid_request", describe_validation_error(exc)) from exc


def request_id(candidate: Any) -> str:
    if candidate is None or candidate == "":
        return new_request_id()
    if not isinstance(candidate, str) or not is_valid_request_id(candidate):
        raise ApiError(400, "invalid_request", "'id' must be 1–128 characters of [A-Za-z0-9_.:-]")
    return candidate


def generation_from_infer(decoded: codec.InferRequest, model: LoadedModel) -> GenerationRequest:
    """The generation JSON out of an infer request's one BYTES input ``request``, shape [1]."""
    try:
        tensor = decoded.input(REQUEST_INPUT)
    except codec.ProtocolError as exc:
        raise ApiError(400, "invalid_tensor", str(exc)) from exc
    if tensor.datatype != "BYTES":
        raise ApiError(
            400, "invalid_tensor", f"input {REQUEST_INPUT!r} must be BYTES, not {tensor.datatype}"
        )
    if tensor.element_count != 1 or not isinstance(tensor.data, list):
        raise ApiError(
            400,
            "invalid_tensor",
            f"input {REQUEST_INPUT!r} must have shape [1], not {list(tensor.shape)}",
        )
    unknown_inputs = [t.name for t in decoded.inputs if t.name != REQUEST_INPUT]
    if unknown_inputs:
        raise ApiError(400, "invalid_tensor", f"unknown inputs: {', '.join(unknown_inputs)}")
    output = output_name(model)
    for wanted in decoded.outputs:
        if wanted.name != output:
            raise ApiError(
                400,
                "invalid_tensor",
                f"model {model.name!r} has no output {wanted.name!r}; it has {output!r}",
            )
    return generation_request(tensor.data[0])


# -------------------------------------------------------------------------------- the run


async def start_run(
    state: WorkerState, model: LoadedModel, gen: GenerationRequest, run_id: str, arrived_ns: int
) -> Run:
    service = service_of(state)
    try:
        return await service.start(model.name, gen, run_id, arrived_ns)
    except (PlanError, MediaError) as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc
    except ModelBusy as exc:
        raise ApiError(503, "busy", str(exc), {"Retry-After": str(exc.retry_after)}) from exc
    except DuplicateRequest as exc:
        raise ApiError(409, "duplicate_request", str(exc)) from exc


def abandon(run: Run) -> None:
    """The caller went away (HTTP hang-up, gRPC cancel): stop the run at its next step."""
    if not run.done:
        log.info("caller of %s went away; cancelling the run", run.request_id)
        run.cancel()
        run.future.add_done_callback(lambda _f: consume_exception(run))


async def outcome_of(
    state: WorkerState, run: Run, model: LoadedModel, caller_left: asyncio.Future[Any] | None
) -> RunOutcome | None:
    """A finished run's outcome; ``None`` if ``caller_left`` completed first. If the waiting
    task itself is cancelled (a gRPC client cancelled the call) the run is cancelled too. A
    failed run raises its ``ApiError``; so does a cancelled one (409 ``cancelled``)."""
    waiting: set[asyncio.Future[Any]] = {run.future}
    if caller_left is not None:
        waiting.add(caller_left)
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        abandon(run)
        raise
    if not run.future.done():
        abandon(run)
        return None
    try:
        outcome = await wait_for(run)
    except RunFailed as exc:
        raise failed_error(exc) from exc
    if outcome.status == "cancelled":
        raise cancelled_error(outcome, device_of(state), model)
    return outcome


async def progress_of(run: Run) -> AsyncIterator[Progress]:
    """The run's progress, one per step, until it ends (the caller then awaits its outcome)."""
    while (progress := await run.events.get()) is not None:
        yield progress


def progress_fields(run_id: str, progress: Progress) -> dict[str, codec.Scalar]:
    fields: dict[str, codec.Scalar] = {
        "id": run_id,
        "step": progress.step,
        "steps": progress.steps,
        "progress": round(progress.fraction, 6),
        "gpu_seconds": round(progress.gpu_seconds, 6),
    }
    if progress.preview is not None:  # asked for with ``previews``: a PNG, base64
        fields["preview"] = base64.b64encode(progress.preview).decode()
        fields["preview_content_type"] = "image/png"
    return fields


def device_of(state: WorkerState) -> DeviceIdentity:
    assert state.device is not None, "the device is prepared before any route answers"
    return state.device


def failed_error(error: RunFailed) -> ApiError:
    if error.rejected_input:
        # The pipeline refused its inputs before doing any work (its own input checks).
        return ApiError(400, "invalid_request", f"the pipeline rejected the request: {error}")
    return ApiError(500, "run_failed", f"the run failed: {error}")


def cancelled_error(outcome: RunOutcome, device: DeviceIdentity, model: LoadedModel) -> ApiError:
    return ApiError(
        409,
        "cancelled",
        f"the run was cancelled after {outcome.steps_completed} steps",
        extra={"parameters": outcome_parameters(outcome, device, model)},
    )


# ----------------------------------------------------------------------------- the answer


def outcome_parameters(
    outcome: RunOutcome, device: DeviceIdentity, model: LoadedModel
) -> dict[str, codec.Scalar]:
    """Response parameters: scalars only, as the protocol requires."""
    parameters: dict[str, codec.Scalar] = {
        "status": outcome.status,
        "task": outcome.plan.task,
        "gpu_seconds": round(outcome.measurement.seconds, 6),
        "meter": outcome.measurement.meter,
        "pipeline_seconds": round(outcome.measurement.wall_seconds, 6),
        "encode_seconds": round(outcome.encode_seconds, 6),
        "device_uuid": device.uuid,
        "device_kind": device.kind,
        "seed": outcome.plan.seed,
        "steps": outcome.plan.steps,
        "steps_completed": outcome.steps_completed,
        "width": outcome.plan.width,
        "height": outcome.plan.height,
        "content_type": outcome.content_type,
        "output_blake3": ",".join(outcome.output_blake3),
        "usage_claim": outcome.claim.to_text(),
    }
    if outcome.plan.ignored_keys:
        parameters["ignored_keys"] = ",".join(outcome.plan.ignored_keys)
    return parameters


def infer_response(
    outcome: RunOutcome, device: DeviceIdentity, run_id: str, model: LoadedModel
) -> codec.InferResponse:
    tensor = codec.Tensor(
        name=output_name(model),
        datatype="BYTES",
        shape=(len(outcome.outputs),),
        data=outcome.outputs,
        parameters={"content_type": outcome.content_type, "content_encoding": "base64"},
    )
    return codec.InferResponse(
        model_name=model.name,
        model_version=MODEL_VERSION,
        id=run_id,
        outputs=(tensor,),
        parameters=outcome_parameters(outcome, device, model),
    )


# ------------------------------------------------------------------ metadata and config


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


def model_parameters(model: LoadedModel, node_key_id: str) -> dict[str, codec.Scalar]:
    return {
        "pipeline": model.base_class,
        "modality": model.modality,
        "tasks": ",".join(model.tasks),
        # The tasks whose pipeline takes an output size (format/width/height); the others
        # (e.g. img2img) keep their input image's size.
        "sized_tasks": ",".join(t for t in model.tasks if {"width", "height"} <= model.accepts(t)),
        "default_width": model.default_width,
        "default_height": model.default_height,
        "default_steps": model.default_steps,
        "min_side": model.min_side,
        "max_side": model.max_side,
        "size_multiple": model.size_multiple,
        "max_concurrency": model.config.max_concurrency,
        "node_key_id": node_key_id,
    }


def model_metadata(model: LoadedModel, node_key_id: str) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [{"name": REQUEST_INPUT, "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": output_name(model), "datatype": "BYTES", "shape": [-1]}],
        "parameters": model_parameters(model, node_key_id),
    }


def model_config(model: LoadedModel, device: DeviceIdentity, node_key_id: str) -> dict[str, Any]:
    """The model as Triton's model configuration (``model_config.proto``), in the JSON form
    Triton's HTTP API answers and the gRPC ``ModelConfig`` is parsed from. No batching
    dimension (``max_batch_size`` 0); one instance per slot; not decoupled."""
    return {
        "name": model.name,
        "platform": PLATFORM,
        "backend": "render",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 0,
        "input": [
            {
                "name": REQUEST_INPUT,
                "data_type": "TYPE_STRING",
                "format": "FORMAT_NONE",
                "dims": [1],
            }
        ],
        "output": [{"name": output_name(model), "data_type": "TYPE_STRING", "dims": [-1]}],
        "instance_group": [
            {
                "name": f"{model.name}_0",
                "kind": "KIND_GPU" if device.kind == "cuda" else "KIND_CPU",
                "count": model.config.max_concurrency,
            }
        ],
        "model_transaction_policy": {"decoupled": False},
        "parameters": {
            key: {"string_value": str(value)}
            for key, value in model_parameters(model, node_key_id).items()
        },
    }


# ----------------------------------------------------------------------------- statistics


def _duration(duration: Duration) -> dict[str, int]:
    return {"count": duration.count, "ns": duration.ns}


def _model_stats(slots: ModelSlots) -> dict[str, Any]:
    stats = slots.stats
    return {
        "name": slots.model.name,
        "version": MODEL_VERSION,
        "last_inference": slots.last_inference_ms,
        "inference_count": slots.completed,
        "execution_count": slots.completed + slots.cancelled + slots.failed,
        "inference_stats": {
            "success": _duration(stats.success),
            "fail": _duration(stats.fail),
            "queue": _duration(stats.queue),
            "compute_input": _duration(stats.compute_input),
            "compute_infer": _duration(stats.compute_infer),
            "compute_output": _duration(stats.compute_output),
        },
        "render": {
            "in_flight": slots.in_flight,
            "active": slots.active,
            "max_concurrency": slots.capacity,
            "cancelled": slots.cancelled,
            "rejected_busy": slots.rejected_busy,
            "steps_executed": slots.steps_executed,
            "mean_run_seconds": slots.mean_run_seconds,
        },
    }


def model_statistics(
    state: WorkerState, name: str | None, version: str | None
) -> list[dict[str, Any]]:
    """Triton's statistics extension (``model_stats``), plus the worker's own ``render`` block;
    ``name`` None: every model."""
    service = service_of(state)
    if name is not None:
        find_model(state, name, version)
    return [
        _model_stats(slots)
        for slots in service.models.values()
        if name is None or slots.model.name == name
    ]

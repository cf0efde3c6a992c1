"""Inference routes: ``infer`` (JSON or binary tensors), ``generate``, ``generate_stream``
(SSE progress, then the result) and cancelling a run in flight."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from render_gateway.core.ids import is_valid_request_id, new_request_id
from render_gateway.generation import GenerationRequest, describe_validation_error
from render_gateway.kserve import codec
from render_gateway.worker.devices import DeviceIdentity
from render_gateway.worker.errors import ApiError, json_response, read_body
from render_gateway.worker.media import MediaError
from render_gateway.worker.pipelines import LoadedModel, PlanError
from render_gateway.worker.runs import (
    DuplicateRequest,
    ModelBusy,
    Run,
    RunFailed,
    RunOutcome,
    consume_exception,
    wait_for,
)
from render_gateway.worker.state import MODEL_VERSION, ready_model, run_service, worker_state

log = logging.getLogger(__name__)

REQUEST_INPUT = "request"


def _generation_request(raw: bytes | str | Any) -> GenerationRequest:
    try:
        if isinstance(raw, bytes | str):
            return GenerationRequest.model_validate_json(raw)
        return GenerationRequest.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(400, "invalid_request", describe_validation_error(exc)) from exc


def _request_id(candidate: Any) -> str:
    if candidate is None:
        return new_request_id()
    if not isinstance(candidate, str) or not is_valid_request_id(candidate):
        raise ApiError(400, "invalid_request", "'id' must be 1–128 characters of [A-Za-z0-9_.:-]")
    return candidate


async def _start(
    request: Request, model: LoadedModel, gen: GenerationRequest, request_id: str
) -> Run:
    service = run_service(request)
    try:
        return await service.start(model.name, gen, request_id)
    except (PlanError, MediaError) as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc
    except ModelBusy as exc:
        raise ApiError(503, "busy", str(exc), {"Retry-After": str(exc.retry_after)}) from exc
    except DuplicateRequest as exc:
        raise ApiError(409, "duplicate_request", str(exc)) from exc


def _outcome_parameters(
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


def output_name(model: LoadedModel) -> str:
    return "video" if model.modality == "video" else "images"


def _response(
    outcome: RunOutcome, device: DeviceIdentity, request_id: str, model: LoadedModel
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
        id=request_id,
        outputs=(tensor,),
        parameters=_outcome_parameters(outcome, device, model),
    )


def _cancelled_error(outcome: RunOutcome, device: DeviceIdentity, model: LoadedModel) -> ApiError:
    return ApiError(
        409,
        "cancelled",
        f"the run was cancelled after {outcome.steps_completed} steps",
        extra={"parameters": _outcome_parameters(outcome, device, model)},
    )


def _failed_error(error: RunFailed) -> ApiError:
    if error.rejected_input:
        # The pipeline refused its inputs before doing any work (its own input checks).
        return ApiError(400, "invalid_request", f"the pipeline rejected the request: {error}")
    return ApiError(500, "run_failed", f"the run failed: {error}")


async def _until_disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _finish(
    request: Request, run: Run, model: LoadedModel
) -> tuple[RunOutcome, DeviceIdentity] | None:
    """Wait for a non-streamed run; None if the client left. A cancelled run is a 409."""
    outcome = await _outcome_or_disconnect(request, run)
    if outcome is None:
        return None
    device = worker_state(request).device
    assert device is not None
    if outcome.status == "cancelled":
        raise _cancelled_error(outcome, device, model)
    return outcome, device


async def _outcome_or_disconnect(request: Request, run: Run) -> RunOutcome | None:
    """The run's outcome, or None if the client went away first (the run is then cancelled)."""
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        waiting: set[asyncio.Future[Any]] = {watcher, run.future}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not run.future.done():
        log.info("client of %s disconnected; cancelling the run", run.request_id)
        run.cancel()
        run.future.add_done_callback(lambda _f: consume_exception(run))
        return None
    try:
        return await wait_for(run)
    except RunFailed as exc:
        raise _failed_error(exc) from exc


async def infer(request: Request) -> Response:
    model = ready_model(request)
    body = await read_body(request, worker_state(request).config.max_request_bytes)
    try:
        header_length = codec.parse_header_length(request.headers.get(codec.HEADER_LENGTH))
        decoded = codec.decode_request(body, header_length)
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
    gen = _generation_request(tensor.data[0])
    request_id = _request_id(decoded.id)
    run = await _start(request, model, gen, request_id)
    finished = await _finish(request, run, model)
    if finished is None:
        return Response(status_code=499)  # nobody is listening; the status is for the log
    response = _response(*finished, request_id, model)
    binary = frozenset({output}) if decoded.wants_binary(output) else frozenset()
    payload, header_length_out = codec.encode_response(response, binary)
    if header_length_out is None:
        return Response(payload, media_type=codec.JSON_CONTENT_TYPE)
    return Response(
        payload,
        media_type=codec.BINARY_CONTENT_TYPE,
        headers={codec.HEADER_LENGTH: str(header_length_out)},
    )


async def _generate_inputs(request: Request, model: LoadedModel) -> tuple[GenerationRequest, str]:
    """Triton's generate extension: inputs are top-level keys of a JSON object."""
    body = await read_body(request, worker_state(request).config.max_request_bytes)
    try:
        header, _ = codec.split_body(body, None)
    except codec.ProtocolError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc
    if REQUEST_INPUT not in header:
        raise ApiError(400, "invalid_tensor", f"input {REQUEST_INPUT!r} is missing")
    unknown = sorted(set(header) - {REQUEST_INPUT, "id", "parameters"})
    if unknown:
        raise ApiError(400, "invalid_tensor", f"unknown inputs: {', '.join(unknown)}")
    raw = header[REQUEST_INPUT]
    if not isinstance(raw, str | dict):
        raise ApiError(
            400, "invalid_tensor", f"{REQUEST_INPUT!r} must be a JSON object or its text"
        )
    return _generation_request(raw), _request_id(header.get("id"))


def _result_json(
    outcome: RunOutcome, device: DeviceIdentity, request_id: str, model: LoadedModel
) -> dict[str, Any]:
    return codec.response_json(_response(outcome, device, request_id, model), frozenset(), [])


async def generate(request: Request) -> Response:
    model = ready_model(request)
    gen, request_id = await _generate_inputs(request, model)
    run = await _start(request, model, gen, request_id)
    finished = await _finish(request, run, model)
    if finished is None:
        return Response(status_code=499)
    return json_response(_result_json(*finished, request_id, model))


async def generate_stream(request: Request) -> Response:
    model = ready_model(request)
    gen, request_id = await _generate_inputs(request, model)
    run = await _start(request, model, gen, request_id)
    device = worker_state(request).device
    assert device is not None

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            while (progress := await run.events.get()) is not None:
                data = {
                    "id": request_id,
                    "step": progress.step,
                    "steps": progress.steps,
                    "progress": round(progress.fraction, 6),
                    "gpu_seconds": round(progress.gpu_seconds, 6),
                }
                yield ServerSentEvent(orjson.dumps(data).decode(), event="progress")
            try:
                outcome = await wait_for(run)
            except RunFailed as exc:
                error = _failed_error(exc)
                yield ServerSentEvent(
                    orjson.dumps({"error": error.code, "message": error.message}).decode(),
                    event="error",
                )
                return
            if outcome.status == "cancelled":
                data = {"id": request_id, "parameters": _outcome_parameters(outcome, device, model)}
                yield ServerSentEvent(orjson.dumps(data).decode(), event="cancelled")
                return
            result = _result_json(outcome, device, request_id, model)
            yield ServerSentEvent(orjson.dumps(result).decode(), event="result")
        finally:
            if not run.done:
                log.info("stream of %s closed early; cancelling the run", request_id)
                run.cancel()
                run.future.add_done_callback(lambda _f: consume_exception(run))

    return EventSourceResponse(events(), ping=15, headers={"X-Request-Id": request_id})


async def cancel_request(request: Request) -> Response:
    ready_model(request)
    request_id = request.path_params["request_id"]
    run = run_service(request).get_run(request_id)
    if run is None or run.model_name != request.path_params["model"]:
        raise ApiError(
            404, "request_not_found", f"no run {request_id!r} is in flight on this model"
        )
    run.cancel()
    return Response(status_code=204)

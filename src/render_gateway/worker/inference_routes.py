"""Inference routes over HTTP: ``infer`` (JSON or binary tensors), ``generate`` (Triton's
generate extension), ``generate_stream`` (SSE progress, then the result) and cancelling a run
in flight. The serving itself is in ``serving``, shared with the gRPC endpoint."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from render_gateway.generation import GenerationRequest
from render_gateway.kserve import codec
from render_gateway.worker import serving
from render_gateway.worker.errors import ApiError, json_response, read_body
from render_gateway.worker.pipelines import LoadedModel
from render_gateway.worker.runs import Run, RunFailed, RunOutcome, wait_for
from render_gateway.worker.state import ready_model, run_service, worker_state

REQUEST_INPUT = serving.REQUEST_INPUT


async def _until_disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _finish(request: Request, run: Run, model: LoadedModel) -> RunOutcome | None:
    """Wait for a non-streamed run; None if the client left (the run is then cancelled)."""
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        return await serving.outcome_of(worker_state(request), run, model, watcher)
    finally:
        watcher.cancel()


async def infer(request: Request) -> Response:
    arrived_ns = time.perf_counter_ns()
    model = ready_model(request)
    state = worker_state(request)
    body = await read_body(request, state.config.max_request_bytes)
    try:
        header_length = codec.parse_header_length(request.headers.get(codec.HEADER_LENGTH))
        decoded = codec.decode_request(body, header_length)
    except codec.ProtocolError as exc:
        raise ApiError(400, "invalid_tensor", str(exc)) from exc
    gen = serving.generation_from_infer(decoded, model)
    request_id = serving.request_id(decoded.id)
    run = await serving.start_run(state, model, gen, request_id, arrived_ns)
    outcome = await _finish(request, run, model)
    if outcome is None:
        return Response(status_code=499)  # nobody is listening; the status is for the log
    response = serving.infer_response(outcome, serving.device_of(state), request_id, model)
    output = serving.output_name(model)
    binary = frozenset({output}) if decoded.wants_binary(output) else frozenset()
    payload, header_length_out = codec.encode_response(response, binary)
    if header_length_out is None:
        return Response(payload, media_type=codec.JSON_CONTENT_TYPE)
    return Response(
        payload,
        media_type=codec.BINARY_CONTENT_TYPE,
        headers={codec.HEADER_LENGTH: str(header_length_out)},
    )


async def _generate_inputs(request: Request) -> tuple[GenerationRequest, str]:
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
    return serving.generation_request(raw), serving.request_id(header.get("id"))


def _infer_json(response: codec.InferResponse) -> dict[str, Any]:
    """The infer response's JSON form (what ``generate_stream``'s ``result`` event carries)."""
    return codec.response_json(response, frozenset(), [])


def generate_json(response: codec.InferResponse) -> dict[str, Any]:
    """Triton's generate response: each output by name at the top level (one element: the
    value; several: a list), beside ``model_name``, ``model_version``, ``id`` and Render's
    ``parameters``. Output bytes are base64 text, which ``parameters.content_encoding`` says."""
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
    }
    for tensor in response.outputs:
        assert isinstance(tensor.data, list)
        values = [base64.b64encode(element).decode() for element in tensor.data]
        body[tensor.name] = values[0] if len(values) == 1 else values
    body["parameters"] = {**response.parameters, "content_encoding": "base64"}
    return body


async def generate(request: Request) -> Response:
    arrived_ns = time.perf_counter_ns()
    model = ready_model(request)
    state = worker_state(request)
    gen, request_id = await _generate_inputs(request)
    run = await serving.start_run(state, model, gen, request_id, arrived_ns)
    outcome = await _finish(request, run, model)
    if outcome is None:
        return Response(status_code=499)
    response = serving.infer_response(outcome, serving.device_of(state), request_id, model)
    return json_response(generate_json(response))


async def generate_stream(request: Request) -> Response:
    arrived_ns = time.perf_counter_ns()
    model = ready_model(request)
    state = worker_state(request)
    gen, request_id = await _generate_inputs(request)
    run = await serving.start_run(state, model, gen, request_id, arrived_ns)
    device = serving.device_of(state)

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            async for progress in serving.progress_of(run):
                data = serving.progress_fields(request_id, progress)
                yield ServerSentEvent(orjson.dumps(data).decode(), event="progress")
            try:
                outcome = await wait_for(run)
            except RunFailed as exc:
                error = serving.failed_error(exc)
                yield ServerSentEvent(
                    orjson.dumps({"error": error.code, "message": error.message}).decode(),
                    event="error",
                )
                return
            if outcome.status == "cancelled":
                parameters = serving.outcome_parameters(outcome, device, model)
                cancelled = {"id": request_id, "parameters": parameters}
                yield ServerSentEvent(orjson.dumps(cancelled).decode(), event="cancelled")
                return
            result = _infer_json(serving.infer_response(outcome, device, request_id, model))
            yield ServerSentEvent(orjson.dumps(result).decode(), event="result")
        finally:
            serving.abandon(run)  # the stream closed early: nobody reads the run any more

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

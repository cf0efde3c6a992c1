"""The worker's HTTP surface: KServe v2 / Triton routes over the run service."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from render_gateway import __version__
from render_gateway.config import WorkerConfig
from render_gateway.generation import GenerationRequest, describe_validation_error
from render_gateway.ids import is_valid_request_id, new_request_id
from render_gateway.kserve import codec
from render_gateway.signing_keys import key_id, load_or_create_key, public_key_bytes
from render_gateway.worker.devices import DeviceIdentity
from render_gateway.worker.media import MediaError, RemoteImagePolicy
from render_gateway.worker.pipelines import LoadedModel, PlanError
from render_gateway.worker.runs import (
    DuplicateRequest,
    ModelBusy,
    Run,
    RunFailed,
    RunOutcome,
    RunService,
    consume_exception,
    wait_for,
)

log = logging.getLogger(__name__)

MODEL_VERSION = "1"
REQUEST_INPUT = "request"
EXTENSIONS = [
    "binary_tensor_data",
    "statistics",
    "generate",
    "generate_stream",
    "render_usage_claim",
    "render_cancel",
]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.extra = extra or {}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=codec.JSON_CONTENT_TYPE)


def error_response(error: ApiError) -> Response:
    body = {"error": error.code, "message": error.message, **error.extra}
    return json_response(body, error.status, error.headers)


@dataclass
class ModelState:
    name: str
    status: str = "loading"  # loading | ready | failed
    error: str | None = None


@dataclass
class WorkerState:
    config: WorkerConfig
    service: RunService | None = None
    device: DeviceIdentity | None = None
    models: dict[str, ModelState] = field(default_factory=dict)
    loaded: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        return self.loaded.is_set() and all(m.status == "ready" for m in self.models.values())


# ---------------------------------------------------------------------------- helpers


def _state(request: Request) -> WorkerState:
    state: WorkerState = request.app.state.worker
    return state


def _service(request: Request) -> RunService:
    service = _state(request).service
    if service is None:
        raise ApiError(503, "not_ready", "the worker is still starting", {"Retry-After": "1"})
    return service


def _model(request: Request) -> LoadedModel:
    state = _state(request)
    name = request.path_params["model"]
    version = request.path_params.get("version")
    model_state = state.models.get(name)
    if model_state is None or (version is not None and version != MODEL_VERSION):
        raise ApiError(
            404,
            "model_not_found",
            f"unknown model {name!r}" + (f" version {version!r}" if version is not None else ""),
        )
    if model_state.status != "ready" or state.service is None:
        detail = f": {model_state.error}" if model_state.error else ""
        raise ApiError(
            503,
            "model_not_ready",
            f"model {name!r} is {model_state.status}{detail}",
            {"Retry-After": "1"},
        )
    return state.service.models[name].model


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"request body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "payload_too_large", f"request body is over {limit} bytes")
    return bytes(body)


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
    service = _service(request)
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


def _output_name(model: LoadedModel) -> str:
    return "video" if model.modality == "video" else "images"


def _response(
    outcome: RunOutcome, request_id: str, device: DeviceIdentity, model: LoadedModel
) -> codec.InferResponse:
    tensor = codec.Tensor(
        name=_output_name(model),
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
    if error.before_first_step:
        # The pipeline refused its inputs before doing any work (its own input checks).
        return ApiError(400, "invalid_request", f"the pipeline rejected the request: {error}")
    return ApiError(500, "run_failed", f"the run failed: {error}")


async def _until_disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


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


# ---------------------------------------------------------------------------- routes


async def server_metadata(request: Request) -> Response:
    return json_response(
        {"name": "render-worker", "version": __version__, "extensions": EXTENSIONS}
    )


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    state = _state(request)
    body = {"ready": state.ready, "models": {n: m.status for n, m in state.models.items()}}
    return json_response(body, 200 if state.ready else 503)


async def node(request: Request) -> Response:
    state = _state(request)
    key = request.app.state.signing_key.public_key()
    device = state.device
    return json_response(
        {
            "alg": "Ed25519",
            "key_id": key_id(key),
            "public_key": base64.b64encode(public_key_bytes(key)).decode(),
            "device": None
            if device is None
            else {
                "uuid": device.uuid,
                "kind": device.kind,
                "name": device.name,
                "uuid_source": device.uuid_source,
                "meter": "cuda_events" if device.kind == "cuda" else "thread_cpu_time",
            },
        }
    )


async def model_metadata(request: Request) -> Response:
    model = _model(request)
    return json_response(
        {
            "name": model.name,
            "versions": [MODEL_VERSION],
            "platform": "diffusers",
            "inputs": [{"name": REQUEST_INPUT, "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": _output_name(model), "datatype": "BYTES", "shape": [-1]}],
            "parameters": {
                "pipeline": model.base_class,
                "modality": model.modality,
                "tasks": ",".join(model.tasks),
                "default_width": model.default_width,
                "default_height": model.default_height,
                "default_steps": model.default_steps,
                "min_side": model.min_side,
                "max_side": model.max_side,
                "size_multiple": model.size_multiple,
                "max_concurrency": model.config.max_concurrency,
                "node_key_id": key_id(request.app.state.signing_key.public_key()),
            },
        }
    )


async def model_ready(request: Request) -> Response:
    state = _state(request)
    name = request.path_params["model"]
    version = request.path_params.get("version")
    model_state = state.models.get(name)
    if model_state is None or (version is not None and version != MODEL_VERSION):
        raise ApiError(404, "model_not_found", f"unknown model {name!r}")
    is_ready = model_state.status == "ready"
    return json_response({"name": name, "ready": is_ready}, 200 if is_ready else 503)


async def model_stats(request: Request) -> Response:
    """Triton's statistics extension, plus the worker's own counters under ``render``."""
    service = _service(request)
    name = request.path_params.get("model")
    if name is not None:
        _model(request)
    entries = []
    for slots in service.models.values():
        if name is not None and slots.model.name != name:
            continue
        entries.append(
            {
                "name": slots.model.name,
                "version": MODEL_VERSION,
                "inference_count": slots.completed,
                "execution_count": slots.completed + slots.cancelled + slots.failed,
                "inference_stats": {
                    "success": {"count": slots.completed, "ns": slots.success_ns},
                    "fail": {"count": slots.failed, "ns": 0},
                },
                "render": {
                    "in_flight": slots.in_flight,
                    "max_concurrency": slots.capacity,
                    "cancelled": slots.cancelled,
                    "rejected_busy": slots.rejected_busy,
                    "steps_executed": slots.steps_executed,
                    "mean_run_seconds": slots.mean_run_seconds,
                },
            }
        )
    return json_response({"model_stats": entries})


async def infer(request: Request) -> Response:
    model = _model(request)
    state = _state(request)
    body = await _read_body(request, state.config.max_request_bytes)
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
    output_name = _output_name(model)
    for wanted in decoded.outputs:
        if wanted.name != output_name:
            raise ApiError(
                400,
                "invalid_tensor",
                f"model {model.name!r} has no output {wanted.name!r}; it has {output_name!r}",
            )
    gen = _generation_request(tensor.data[0])
    request_id = _request_id(decoded.id)
    run = await _start(request, model, gen, request_id)
    outcome = await _outcome_or_disconnect(request, run)
    if outcome is None:
        return Response(status_code=499)  # nobody is listening; the status is for the log
    assert state.device is not None
    if outcome.status == "cancelled":
        raise _cancelled_error(outcome, state.device, model)
    response = _response(outcome, request_id, state.device, model)
    binary = frozenset({output_name}) if decoded.wants_binary(output_name) else frozenset()
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
    body = await _read_body(request, _state(request).config.max_request_bytes)
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
    outcome: RunOutcome, request_id: str, device: DeviceIdentity, model: LoadedModel
) -> dict[str, Any]:
    return codec.response_json(_response(outcome, request_id, device, model), frozenset(), [])


async def generate(request: Request) -> Response:
    model = _model(request)
    gen, request_id = await _generate_inputs(request, model)
    run = await _start(request, model, gen, request_id)
    outcome = await _outcome_or_disconnect(request, run)
    if outcome is None:
        return Response(status_code=499)
    device = _state(request).device
    assert device is not None
    if outcome.status == "cancelled":
        raise _cancelled_error(outcome, device, model)
    return json_response(_result_json(outcome, request_id, device, model))


async def generate_stream(request: Request) -> Response:
    model = _model(request)
    gen, request_id = await _generate_inputs(request, model)
    run = await _start(request, model, gen, request_id)
    device = _state(request).device
    assert device is not None

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            while (progress := await run.events.get()) is not None:
                data = {
                    "id": request_id,
                    "step": progress.step,
                    "steps": progress.steps,
                    "progress": round(progress.fraction, 6),
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
            result = _result_json(outcome, request_id, device, model)
            yield ServerSentEvent(orjson.dumps(result).decode(), event="result")
        finally:
            if not run.done:
                log.info("stream of %s closed early; cancelling the run", request_id)
                run.cancel()
                run.future.add_done_callback(lambda _f: consume_exception(run))

    return EventSourceResponse(events(), ping=15, headers={"X-Request-Id": request_id})


async def cancel_request(request: Request) -> Response:
    _model(request)
    request_id = request.path_params["request_id"]
    run = _service(request).get_run(request_id)
    if run is None or run.model_name != request.path_params["model"]:
        raise ApiError(
            404, "request_not_found", f"no run {request_id!r} is in flight on this model"
        )
    run.cancel()
    return Response(status_code=204)


# ------------------------------------------------------------------------------ app


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return error_response(
        ApiError(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(ApiError(500, "internal", f"{type(exc).__name__}: {exc}"))


def _routes() -> list[Route]:
    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/node", node),
        Route("/v2/models/stats", model_stats),
    ]
    handlers: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
        ("", model_metadata, ["GET"]),
        ("/ready", model_ready, ["GET"]),
        ("/stats", model_stats, ["GET"]),
        ("/infer", infer, ["POST"]),
        ("/generate", generate, ["POST"]),
        ("/generate_stream", generate_stream, ["POST"]),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        for suffix, handler, methods in handlers:
            routes.append(Route(prefix + suffix, handler, methods=methods))
    routes.append(
        Route("/v2/models/{model}/requests/{request_id}", cancel_request, methods=["DELETE"])
    )
    return routes


def create_app(config: WorkerConfig) -> Starlette:
    signing_key = load_or_create_key(config.data_dir / "node.key")
    state = WorkerState(config=config, models={name: ModelState(name) for name in config.models})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader = asyncio.create_task(_load(state, signing_key))
        try:
            yield
        finally:
            loader.cancel()
            if state.service is not None:
                state.service.shutdown()

    app = Starlette(
        routes=_routes(),
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.worker = state
    app.state.signing_key = signing_key
    return app


async def _load(state: WorkerState, signing_key: Any) -> None:
    """Load torch and the models off the event loop, so health answers while they load."""
    from render_gateway.worker.loading import load_models_into, prepare_device

    config = state.config
    device = await asyncio.to_thread(
        prepare_device, config, public_key_bytes(signing_key.public_key())
    )
    state.device = device
    policy = RemoteImagePolicy(**config.remote_images.model_dump())
    service = RunService(device, signing_key, policy)
    await asyncio.to_thread(load_models_into, service, state, config, device)
    state.service = service
    state.loaded.set()

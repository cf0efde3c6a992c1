"""Health, metadata, node identity and statistics routes (KServe v2 / Triton)."""

from __future__ import annotations

import base64

from starlette.requests import Request
from starlette.responses import Response

from render_gateway import __version__
from render_gateway.signing_keys import key_id, public_key_bytes
from render_gateway.worker.errors import ApiError, json_response
from render_gateway.worker.inference_routes import REQUEST_INPUT, output_name
from render_gateway.worker.state import MODEL_VERSION, ready_model, run_service, worker_state

EXTENSIONS = [
    "binary_tensor_data",
    "statistics",
    "generate",
    "generate_stream",
    "render_usage_claim",
    "render_cancel",
]


async def server_metadata(request: Request) -> Response:
    return json_response(
        {"name": "render-worker", "version": __version__, "extensions": EXTENSIONS}
    )


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    state = worker_state(request)
    body = {"ready": state.ready, "models": {n: m.status for n, m in state.models.items()}}
    return json_response(body, 200 if state.ready else 503)


async def node(request: Request) -> Response:
    state = worker_state(request)
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
    model = ready_model(request)
    return json_response(
        {
            "name": model.name,
            "versions": [MODEL_VERSION],
            "platform": "diffusers",
            "inputs": [{"name": REQUEST_INPUT, "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": output_name(model), "datatype": "BYTES", "shape": [-1]}],
            "parameters": {
                "pipeline": model.base_class,
                "modality": model.modality,
                "tasks": ",".join(model.tasks),
                # The tasks whose pipeline takes an output size (format/width/height); the
                # others (e.g. img2img) keep their input image's size.
                "sized_tasks": ",".join(
                    t for t in model.tasks if {"width", "height"} <= model.accepts(t)
                ),
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
    state = worker_state(request)
    name = request.path_params["model"]
    version = request.path_params.get("version")
    model_state = state.models.get(name)
    if model_state is None or (version is not None and version != MODEL_VERSION):
        raise ApiError(404, "model_not_found", f"unknown model {name!r}")
    is_ready = model_state.status == "ready"
    return json_response({"name": name, "ready": is_ready}, 200 if is_ready else 503)


async def model_stats(request: Request) -> Response:
    """Triton's statistics extension, plus the worker's own counters under ``render``."""
    service = run_service(request)
    name = request.path_params.get("model")
    if name is not None:
        ready_model(request)
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
                    "active": slots.active,
                    "max_concurrency": slots.capacity,
                    "cancelled": slots.cancelled,
                    "rejected_busy": slots.rejected_busy,
                    "steps_executed": slots.steps_executed,
                    "mean_run_seconds": slots.mean_run_seconds,
                },
            }
        )
    return json_response({"model_stats": entries})

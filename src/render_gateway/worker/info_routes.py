"""Health, metadata, model config, node identity and statistics routes (KServe v2 / Triton)
over HTTP; the answers themselves are built in ``serving``, shared with the gRPC endpoint."""

from __future__ import annotations

import base64

from starlette.requests import Request
from starlette.responses import Response

from render_gateway.signing_keys import key_id, public_key_bytes
from render_gateway.worker import serving
from render_gateway.worker.errors import json_response
from render_gateway.worker.state import known_model, ready_model, worker_state


def node_key_id(request: Request) -> str:
    return key_id(request.app.state.signing_key.public_key())


async def server_metadata(request: Request) -> Response:
    return json_response(serving.server_metadata())


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
            "grpc_port": state.grpc_port,
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
    return json_response(serving.model_metadata(ready_model(request), node_key_id(request)))


async def model_config(request: Request) -> Response:
    """Triton's model configuration extension: what PyTriton's ModelClient reads first."""
    model = ready_model(request)
    device = serving.device_of(worker_state(request))
    return json_response(serving.model_config(model, device, node_key_id(request)))


async def model_ready(request: Request) -> Response:
    name = request.path_params["model"]
    model_state = known_model(worker_state(request), name, request.path_params.get("version"))
    is_ready = model_state.status == "ready"
    return json_response({"name": name, "ready": is_ready}, 200 if is_ready else 503)


async def model_stats(request: Request) -> Response:
    """Triton's statistics extension, plus the worker's own counters under ``render``."""
    entries = serving.model_statistics(
        worker_state(request),
        request.path_params.get("model"),
        request.path_params.get("version"),
    )
    return json_response({"model_stats": entries})

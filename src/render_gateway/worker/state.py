"""The worker's state: its config, device, models and run service, and lookups (by name, for
any transport, and by HTTP request)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.requests import Request

from render_gateway.config import WorkerConfig
from render_gateway.worker.devices import DeviceIdentity
from render_gateway.worker.errors import ApiError
from render_gateway.worker.pipelines import LoadedModel
from render_gateway.worker.runs import RunService

MODEL_VERSION = "1"


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
    grpc_port: int | None = None  # the gRPC endpoint's bound port, when it is on

    @property
    def ready(self) -> bool:
        return self.loaded.is_set() and all(m.status == "ready" for m in self.models.values())


def worker_state(request: Request) -> WorkerState:
    state: WorkerState = request.app.state.worker
    return state


def run_service(request: Request) -> RunService:
    return service_of(worker_state(request))


def service_of(state: WorkerState) -> RunService:
    if state.service is None:
        raise ApiError(503, "not_ready", "the worker is still starting", {"Retry-After": "1"})
    return state.service


def ready_model(request: Request) -> LoadedModel:
    return find_model(
        worker_state(request), request.path_params["model"], request.path_params.get("version")
    )


def known_model(state: WorkerState, name: str, version: str | None) -> ModelState:
    """The model's load state; 404 for an unknown model or a version other than 1."""
    model_state = state.models.get(name)
    if model_state is None or (version is not None and version != MODEL_VERSION):
        raise ApiError(
            404,
            "model_not_found",
            f"unknown model {name!r}" + (f" version {version!r}" if version is not None else ""),
        )
    return model_state


def find_model(state: WorkerState, name: str, version: str | None) -> LoadedModel:
    """A loaded model by name (``version`` None or ``"1"``); 404 unknown, 503 not loaded."""
    model_state = known_model(state, name, version)
    if model_state.status != "ready" or state.service is None:
        detail = f": {model_state.error}" if model_state.error else ""
        raise ApiError(
            503,
            "model_not_ready",
            f"model {name!r} is {model_state.status}{detail}",
            {"Retry-After": "1"},
        )
    return state.service.models[name].model

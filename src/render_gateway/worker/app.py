"""The worker's ASGI app: routes, error handlers, and model loading at start-up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from render_gateway.config import WorkerConfig
from render_gateway.signing_keys import key_id, load_or_create_key, public_key_bytes
from render_gateway.worker import info_routes as info
from render_gateway.worker.errors import (
    ApiError,
    api_error_handler,
    http_error_handler,
    unexpected_error_handler,
)
from render_gateway.worker.inference_routes import (
    cancel_request,
    generate,
    generate_stream,
    infer,
)
from render_gateway.worker.media import RemoteImagePolicy
from render_gateway.worker.runs import RunService
from render_gateway.worker.state import ModelState, WorkerState


def _routes() -> list[Route]:
    routes = [
        Route("/v2", info.server_metadata),
        Route("/v2/health/live", info.live),
        Route("/v2/health/ready", info.ready),
        Route("/v2/node", info.node),
        Route("/v2/models/stats", info.model_stats),
    ]
    handlers: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
        ("", info.model_metadata, ["GET"]),
        ("/config", info.model_config, ["GET"]),
        ("/ready", info.model_ready, ["GET"]),
        ("/stats", info.model_stats, ["GET"]),
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
        # A device that cannot be used is fatal: fail start-up (uvicorn exits non-zero).
        from render_gateway.worker.loading import prepare_device

        public_key = public_key_bytes(signing_key.public_key())
        state.device = await asyncio.to_thread(prepare_device, config, public_key)
        grpc_server = None
        if config.grpc_port is not None:
            # Before the models load, so health answers over gRPC while they do.
            from render_gateway.worker.grpc_server import start_grpc_server

            grpc_server, state.grpc_port = await start_grpc_server(
                state, key_id(signing_key.public_key()), config.host, config.grpc_port
            )
        loader = asyncio.create_task(_load(state, signing_key))
        try:
            yield
        finally:
            loader.cancel()
            if grpc_server is not None:
                await grpc_server.stop(grace=1.0)  # cancels the calls still open
            if state.service is not None:
                state.service.shutdown()

    app = Starlette(
        routes=_routes(),
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
    )
    app.state.worker = state
    app.state.signing_key = signing_key
    return app


async def _load(state: WorkerState, signing_key: Any) -> None:
    """Load the models off the event loop, so health answers while they load."""
    from render_gateway.worker.loading import load_models_into

    config, device = state.config, state.device
    assert device is not None
    policy = RemoteImagePolicy(**config.remote_images.model_dump())
    service = RunService(
        device, signing_key, policy, config.claim_window_ms / 1000, config.claim_window_max
    )
    await asyncio.to_thread(load_models_into, service, state, config, device)
    state.service = service
    state.loaded.set()

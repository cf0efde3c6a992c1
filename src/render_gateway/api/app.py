"""The gateway's ASGI app (FastAPI): routes, error handling, middleware, start-up."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.exceptions import HTTPException

from render_gateway import __version__
from render_gateway.api import (
    asset_routes,
    audit_routes,
    backend_routes,
    capacity_routes,
    console_routes,
    docs_routes,
    identity_routes,
    info_routes,
    job_read_routes,
    job_routes,
    openai_routes,
    openai_video_routes,
    reconcile_routes,
    sync_routes,
    upload_routes,
    usage_routes,
    ws_routes,
)
from render_gateway.api.api_models import exact_pass_through_bounds
from render_gateway.api.http import (
    ApiError,
    RequestBodyGuard,
    RequestIdMiddleware,
    api_error_handler,
    http_error_handler,
    refused_handler,
    store_unavailable_handler,
    unexpected_error_handler,
    validation_error_handler,
)
from render_gateway.api.metrics import LatencyMiddleware, SocketCollector, make_registry
from render_gateway.application.refusals import Refused
from render_gateway.application.services import GatewayServices
from render_gateway.application.socket_jobs import SocketStats
from render_gateway.config import GatewayConfig
from render_gateway.stores.unavailable import StoreUnavailable

# FastAPI's native OpenTelemetry (FastAPI releases that have it), off: the gateway exports
# Prometheus metrics and sets no OTel provider, yet asking whether one is set (environment
# reads) took ~10% of the event loop's time on every request (docs/BENCHMARKS.md, issue 16).
NO_NATIVE_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(config: GatewayConfig, started: GatewayServices | None = None) -> FastAPI:
    """The app; ``started``: services ``serve`` already started (so a refusal at start is one
    line, not a lifespan traceback). Either way the lifespan's end drains and stops them."""
    holder: dict[str, GatewayServices] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = started or await GatewayServices.start(config)
        holder["services"] = services
        app.state.services = services
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="Render",
        version=__version__,
        description="Inference gateway for generative media with metered, verifiable billing.",
        lifespan=lifespan,
        # FastAPI's own viewers load their scripts from CDNs: docs_routes serves /docs offline.
        docs_url=None,
        redoc_url=None,
        **NO_NATIVE_TELEMETRY,
    )
    registry, latency = make_registry(lambda: holder.get("services"))
    app.state.metrics_registry = registry
    # Set, not left to getattr's default: a missing State attribute raises and catches an
    # AttributeError on every lean request (1.0 µs against 0.37).
    app.state.lean_routes = True
    app.state.socket_stats = SocketStats()  # GET /ws's connections, for /metrics
    registry.register(SocketCollector(app.state.socket_stats))
    if started is not None:  # usable at once (an in-process client runs no lifespan)
        app.state.services = started
        holder["services"] = started
    serves_customers = "api" in config.roles  # a scheduler- or singleton-only process does not
    routers = (
        job_read_routes, job_routes, sync_routes, info_routes, asset_routes, usage_routes,
        audit_routes, reconcile_routes, backend_routes, openai_routes, openai_video_routes,
        upload_routes, ws_routes, identity_routes, capacity_routes, console_routes,
    )  # fmt: skip
    for routes in routers:
        # Health, readiness and metrics on every process; the rest with the api role.
        if serves_customers or routes is info_routes:
            add_routes(app, routes.router)
    add_routes(app, docs_routes.router)  # beside /openapi.json, on every process as it is
    app.mount(docs_routes.STATIC_PATH, docs_routes.static_files, name="docs-static")
    exact_pass_through_bounds(app)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(Refused, refused_handler)
    app.add_exception_handler(StoreUnavailable, store_unavailable_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.add_middleware(
        RequestBodyGuard,
        limit=config.max_body_bytes,
        timeout_seconds=config.body_timeout_seconds,
        streamed=upload_routes.streams_body,
    )
    app.add_middleware(LatencyMiddleware, histogram=latency)
    app.add_middleware(RequestIdMiddleware)
    return app


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """The router's routes, put in the app's own list rather than included. FastAPI 0.165
    keeps an included router as a branch that every request walks, matching its routes
    through "effective route contexts" three times over: ~55 µs of a ~150 µs job lookup
    (docs/BENCHMARKS.md, issue 16). A router here adds nothing at inclusion (its prefix, tags
    and schema flag are already in its routes, it has no dependencies), so each route is the
    same route either way; the OpenAPI document is unchanged (tests/test_docs.py)."""
    plain = all(isinstance(route, APIRoute | APIWebSocketRoute) for route in router.routes)
    if router.dependencies or not plain:
        raise TypeError("add_routes takes a router of plain routes without dependencies")
    app.router.routes.extend(router.routes)

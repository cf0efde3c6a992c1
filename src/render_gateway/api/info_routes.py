"""Catalog, health, readiness and metrics (assets: asset_routes.py)."""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from render_gateway.api.api_models import ReadyBody
from render_gateway.api.deps import services
from render_gateway.api.http import json_response
from render_gateway.stores.unavailable import StoreUnavailable

router = APIRouter()


@router.get("/models", summary="The capability matrix")
async def models(request: Request) -> dict[str, Any]:
    return services(request).catalog.matrix()


@router.get("/models/aliases", summary="Hugging Face ids → family/model")
async def aliases(request: Request) -> dict[str, Any]:
    return services(request).catalog.aliases()


@router.get("/health", summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=None,
    responses={
        200: {"model": ReadyBody, "description": "ready"},
        503: {
            "model": ReadyBody,
            "description": "not ready: no backend passed its probe, or a store's Redis did not"
            " answer",
        },
    },
    summary="Readiness: every store reachable and at least one backend reachable",
)
async def ready(request: Request) -> Response:
    svc = services(request)
    backends = {b.spec.id: b.healthy for b in svc.pool.backends.values()}
    # Bounded (about a second) however Redis fails, so a probe never hangs on it.
    stores = await svc.stores.reachable()
    is_ready = any(backends.values()) and all(stores.values())
    body = {"ready": is_ready, "backends": backends, "stores": stores}
    return json_response(body, 200 if is_ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    # What lives in a store is read before the scrape; while the store is unreachable the
    # last values are served (monitoring goes on through a Redis outage; /ready says it).
    with contextlib.suppress(StoreUnavailable):
        await services(request).refresh_gauges()
    return Response(
        generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )

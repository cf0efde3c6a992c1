"""Catalog, assets, health, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from render_gateway.gateway.api_models import ERROR_RESPONSES
from render_gateway.gateway.deps import services
from render_gateway.gateway.http import ApiError, json_response
from render_gateway.stores.assets import AssetNotFound, CorruptAsset

router = APIRouter()


@router.get("/models", summary="The capability matrix")
async def models(request: Request) -> dict[str, Any]:
    return services(request).catalog.matrix()


@router.get("/models/aliases", summary="Hugging Face ids → family/model")
async def aliases(request: Request) -> dict[str, Any]:
    return services(request).catalog.aliases()


@router.get(
    "/assets/{asset_id}", responses=ERROR_RESPONSES, response_class=Response, summary="Output bytes"
)
async def asset(asset_id: str, request: Request) -> Response:
    try:
        found, data = await services(request).assets.get(asset_id)
    except AssetNotFound as exc:
        raise ApiError(404, "asset_not_found", f"no asset {asset_id!r}") from exc
    except CorruptAsset as exc:
        raise ApiError(500, "asset_corrupt", "the stored bytes fail their hash check") from exc
    etag = f'"{found.id[2:]}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "ETag": etag}
    return Response(data, media_type=found.content_type, headers=headers)


@router.get("/health", summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: stores open and at least one backend reachable")
async def ready(request: Request) -> Response:
    svc = services(request)
    backends = {b.spec.id: b.healthy for b in svc.pool.backends.values()}
    is_ready = any(backends.values())
    return json_response({"ready": is_ready, "backends": backends}, 200 if is_ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )

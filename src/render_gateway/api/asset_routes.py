"""Output bytes: read by their owner (and admins) with credentials, by anyone else only through
a signed, expiring URL that the owner mints."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection

from render_gateway.api.api_models import ERROR_RESPONSES
from render_gateway.api.deps import caller, is_admin, services
from render_gateway.api.http import ApiError
from render_gateway.application.asset_urls import UrlCheck, is_signed
from render_gateway.auth.principal import Principal
from render_gateway.stores.assets import Asset, AssetNotFound, CorruptAsset, is_asset_id

router = APIRouter()

# What a credentialed read may be cached as: by the caller's own cache only.
PRIVATE_CACHE = "private, max-age=31536000, immutable"


class AssetUrlRequest(BaseModel):
    # Unknown fields are refused, not ignored: the document says so (additionalProperties:
    # false), and a field nobody reads is a caller's mistake.
    model_config = ConfigDict(extra="forbid")

    expires_in: int | None = Field(
        default=None, ge=1, description="seconds; default and maximum: asset_url_ttl_seconds"
    )


class AssetUrlResponse(BaseModel):
    url: str
    expires_at: str


def _not_found(asset_id: str) -> ApiError:
    return ApiError(404, "asset_not_found", f"no asset {asset_id!r}")


async def owned_asset(request: Request, asset_id: str, principal: Principal) -> Asset:
    """The asset's record if the caller owns it or is an admin; others' assets look absent."""
    try:
        found = await services(request).assets.describe(asset_id)
    except AssetNotFound as exc:
        raise _not_found(asset_id) from exc
    if found.owner != principal.customer_id and not is_admin(request, principal):
        raise _not_found(asset_id)
    return found


def _own_hosts(request: HTTPConnection) -> set[str]:
    """The hosts an absolute asset URL of this gateway may name: the one the request came in
    on, and the address it listens on."""
    config = services(request).config
    hosts = {f"{config.host}:{config.port}".lower()}
    if host := request.headers.get("host"):
        hosts.add(host.lower())
    return hosts


async def admit_asset_inputs(
    request: HTTPConnection, principal: Principal, generation: dict[str, Any]
) -> dict[str, Any]:
    """``image``/``mask`` naming an asset of this gateway, checked for the caller
    (application/asset_inputs.py); the request supplies the hosts its URLs may name."""
    return await services(request).asset_inputs.admit(
        principal, is_admin(request, principal), generation, _own_hosts(request)
    )


@router.get(
    "/assets/{asset_id}",
    responses={
        200: {"description": "the bytes", "content": {"image/png": {}, "video/mp4": {}}},
        304: {"description": "not modified (If-None-Match)"},
        **ERROR_RESPONSES,
    },
    response_class=Response,
    summary="Output bytes (owner's credentials, or a signed URL)",
)
async def read_asset(asset_id: str, request: Request) -> Response:
    if not is_asset_id(asset_id):
        raise _not_found(asset_id)  # a malformed id names nothing: no need to authenticate
    svc = services(request)
    query = dict(request.query_params)
    signed = is_signed(query)
    check = svc.asset_urls.check(asset_id, query) if signed else UrlCheck.invalid
    if check is UrlCheck.valid:
        cache = f"public, max-age={svc.asset_urls.seconds_left(query)}, immutable"
        try:
            found = await svc.assets.describe(asset_id)
        except AssetNotFound as exc:
            raise _not_found(asset_id) from exc
    elif signed and "authorization" not in request.headers:
        if check is UrlCheck.expired:
            raise ApiError(403, "asset_url_expired", "this asset URL has expired; mint a new one")
        raise ApiError(403, "asset_url_invalid", "this asset URL's signature does not match")
    else:
        found = await owned_asset(request, asset_id, await caller(request, None))
        cache = PRIVATE_CACHE
    etag = f'"{found.blake3}"'
    headers = {"Cache-Control": cache, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    try:
        found, data = await svc.assets.get(asset_id)
    except AssetNotFound as exc:
        raise _not_found(asset_id) from exc
    except CorruptAsset as exc:
        raise ApiError(500, "asset_corrupt", "the stored bytes fail their hash check") from exc
    return Response(data, media_type=found.content_type, headers=headers)


@router.post(
    "/assets/{asset_id}/url",
    response_model=AssetUrlResponse,
    responses=ERROR_RESPONSES,
    summary="Mint a signed, expiring URL for one of your assets",
)
async def mint_asset_url(
    asset_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    body: AssetUrlRequest | None = None,
) -> dict[str, str]:
    if not is_asset_id(asset_id):
        raise _not_found(asset_id)
    await owned_asset(request, asset_id, principal)
    signer = services(request).asset_urls
    ttl = signer.ttl_seconds
    if body is not None and body.expires_in is not None:
        if body.expires_in > ttl:
            raise ApiError(
                400, "invalid_request", f"expires_in: at most {ttl} seconds", {"maximum": ttl}
            )
        ttl = body.expires_in
    signed = signer.sign(asset_id, ttl)
    expires_at = datetime.fromtimestamp(signed.expires, UTC).isoformat().replace("+00:00", "Z")
    return {"url": signed.url, "expires_at": expires_at}

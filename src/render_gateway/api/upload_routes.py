"""``POST /uploads`` and the PUT of its signed URL: HTTP only; the rules are the use case's
(application/uploads.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Scope

from render_gateway.api.api_models import ERROR_RESPONSES, ErrorBody
from render_gateway.api.deps import caller, services
from render_gateway.api.http import json_response
from render_gateway.application.uploads import MAX_UPLOAD_BYTES, UPLOAD_TYPES
from render_gateway.auth.principal import Principal

router = APIRouter()

_PREFIX = "/uploads/"
ImageType = Literal["image/png", "image/jpeg", "image/webp"]


def streams_body(scope: Scope) -> bool:
    """The upload PUT reads its own body, streamed under its own limits: the body guard
    (``max_body_bytes``, ``body_timeout_seconds``) lets it through, and closes the connection
    after any refusal instead of draining the rest of the body."""
    path = str(scope.get("path", ""))
    asset_id = path.removeprefix(_PREFIX)
    return scope.get("method") == "PUT" and path.startswith(_PREFIX) and "/" not in asset_id


class UploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content_type: ImageType = Field(description="the type the PUT must send, and its bytes be")
    size: int = Field(
        alias="bytes", ge=1, le=MAX_UPLOAD_BYTES, description="the exact size the PUT must send"
    )

    @field_validator("size", mode="before")
    @classmethod
    def _a_json_integer(cls, value: object) -> object:
        # ``true`` or ``"10"`` is not a size (lax mode would read them as 1 and 10); 10.0 is,
        # as JSON Schema's ``integer`` says.
        if isinstance(value, bool | str):
            raise ValueError("a JSON integer")
        return value


class UploadTicket(BaseModel):
    id: str = Field(description="the asset id the upload will have")
    upload_url: str = Field(
        description="PUT the bytes here, with Content-Type as declared; no credentials: the "
        "URL is signed. Usable once, until expires_at"
    )
    method: Literal["PUT"] = "PUT"
    asset_url: str = Field(description="the signed GET URL of the asset once uploaded")
    expires_at: str = Field(description="when upload_url stops working (ISO 8601, UTC)")
    content_type: ImageType
    size: int = Field(alias="bytes")


class UploadedAsset(BaseModel):
    id: str
    asset_url: str = Field(description="the asset's signed GET URL; usable as image or mask")
    content_type: ImageType
    size: int = Field(alias="bytes")


def _iso(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


def _absolute(request: Request, path: str) -> str:
    """A gateway path as a URL on the host the request came in on (an upload URL goes to other
    tools as is, like a presigned S3 URL; an asset URL on this host is an input as is)."""
    return str(request.base_url).rstrip("/") + path


@router.post(
    "/uploads",
    response_model=UploadTicket,
    responses=ERROR_RESPONSES,
    summary="Sign a one-time upload URL for an image (PNG, JPEG, WebP; up to 50 MiB)",
)
async def create_upload(
    body: UploadRequest,
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
) -> Response:
    ticket = services(request).uploads.create(principal, body.content_type, body.size)
    grant = ticket.grant
    return json_response(
        {
            "id": grant.asset_id,
            "upload_url": _absolute(request, ticket.upload_path),
            "method": "PUT",
            "asset_url": _absolute(request, ticket.asset_path),
            "expires_at": _iso(grant.expires),
            "content_type": grant.content_type,
            "bytes": grant.size,
        }
    )


_PUT_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "wrong Content-Type, wrong size, or not the image declared"),
        (403, "the URL's signature does not match"),
        (408, "the bytes did not arrive within upload_timeout_seconds"),
        (409, "the URL was used: its asset is stored"),
        (410, "the URL has expired"),
        (503, "the asset store is unreachable"),
    )
}
_SIGNED = "as POST /uploads put it in upload_url"


@router.put(
    "/uploads/{asset_id}",
    status_code=201,
    response_model=UploadedAsset,
    responses=_PUT_ERRORS,
    summary="Send an upload's bytes to its signed URL (no credentials)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}} for media in UPLOAD_TYPES
            },
        }
    },
)
async def put_upload(
    asset_id: str,
    request: Request,
    owner: Annotated[str, Query(description=_SIGNED)],
    declared_type: Annotated[str, Query(alias="type", description=_SIGNED)],
    size: Annotated[str, Query(alias="bytes", description=_SIGNED)],
    expires: Annotated[str, Query(description=_SIGNED)],
    signature: Annotated[str, Query(description=_SIGNED)],
) -> Response:
    svc = services(request)
    query = {"owner": owner, "type": declared_type, "bytes": size, "expires": expires,
             "signature": signature}  # fmt: skip
    try:
        asset = await svc.uploads.receive(
            asset_id,
            query,
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            request.stream(),
        )
    except ClientDisconnect:
        return Response(status_code=499)  # nobody is listening; the status is for the log
    return json_response(
        {
            "id": asset.id,
            "asset_url": _absolute(request, svc.uploads.asset_path(asset.id)),
            "content_type": asset.content_type,
            "bytes": asset.size,
        },
        status=201,
        headers={"ETag": f'"{asset.blake3}"'},
    )

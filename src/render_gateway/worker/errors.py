"""The worker's error bodies, in Triton's shape with Render's fields beside it:
``{"error": text, "code": code, "message": text}`` on every failure. Triton's clients show
``error`` (so a Triton user reads the human message); Render's gateway reads ``code``."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from render_gateway.kserve import codec

log = logging.getLogger(__name__)


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
    body = {"error": error.message, "code": error.code, "message": error.message, **error.extra}
    return json_response(body, error.status, error.headers)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"request body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "payload_too_large", f"request body is over {limit} bytes")
    return bytes(body)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return error_response(
        ApiError(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))
    )


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(ApiError(500, "internal", f"{type(exc).__name__}: {exc}"))

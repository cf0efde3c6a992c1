"""The gateway's HTTP conventions: a request id on every response, and one JSON error body
``{"error", "message", "request_id", "details"}`` for every failure."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from render_gateway.ids import new_request_id

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "X-Request-Id"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or {}
        self.headers = headers or {}


def request_id_of(request: Request) -> str:
    value = request.scope.get("state", {}).get("request_id")
    return str(value) if value else new_request_id()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def error_response(request: Request, error: ApiError) -> Response:
    body = {
        "error": error.code,
        "message": error.message,
        "request_id": request_id_of(request),
        "details": error.details,
    }
    return json_response(body, error.status, error.headers)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request, exc)


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
        for e in exc.errors()
    ]
    message = "; ".join(f"{p['field'] or 'body'}: {p['message']}" for p in problems)
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and "json" not in content_type:
        message = (
            f"send the body as JSON with 'Content-Type: application/json' (got {content_type!r})"
        )
    return error_response(
        request, ApiError(400, "invalid_request", message, {"problems": problems})
    )


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    error = ApiError(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))
    return error_response(request, error)


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    # This handler runs outside the request-id middleware, so it sets the header itself.
    headers = {REQUEST_ID_HEADER: request_id_of(request)}
    return error_response(
        request, ApiError(500, "internal", "internal error; see the logs", headers=headers)
    )


class RequestIdMiddleware:
    """Give every request an id (kept in scope state) and echo it on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodySizeLimitMiddleware:
    """Refuse bodies over the limit with the JSON 413, before the handler reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, "payload_too_large", f"the body is over {self.limit} bytes")
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        error = ApiError(413, "payload_too_large", f"the body is over {self.limit} bytes")
        await error_response(request, error)(scope, receive, send)

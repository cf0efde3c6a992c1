"""The gateway's HTTP conventions: a request id on every response, and one JSON error body
``{"error", "message", "request_id", "details"}`` for every failure."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from render_gateway.api.lean_route import PARSED_JSON
from render_gateway.api.openai_shapes import is_openai_path, openai_error
from render_gateway.application.refusals import RateInfo, RefusalKind, Refused
from render_gateway.core.ids import new_request_id
from render_gateway.stores.unavailable import StoreUnavailable

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
    """The error body: Render's, or OpenAI's shape under ``/v1/`` (the OpenAI-compatible
    routes, whose clients read only that), with the same status and headers."""
    if is_openai_path(request.url.path):
        shaped = openai_error(error.status, error.code, error.message, error.details)
        return json_response(shaped, error.status, error.headers)
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


REFUSAL_STATUS = {
    RefusalKind.invalid: 400,
    RefusalKind.payment: 402,
    RefusalKind.forbidden: 403,
    RefusalKind.not_found: 404,
    RefusalKind.timeout: 408,
    RefusalKind.conflict: 409,
    RefusalKind.gone: 410,
    RefusalKind.too_many: 429,
    RefusalKind.upstream: 502,
    RefusalKind.unavailable: 503,
}


def rate_headers(rate: RateInfo) -> dict[str, str]:
    headers = {
        "X-RateLimit-Limit": str(rate.limit),
        "X-RateLimit-Remaining": str(rate.remaining),
        "X-RateLimit-Reset": str(rate.reset_seconds),
    }
    if rate.retry_after_seconds is not None:
        headers["Retry-After"] = str(rate.retry_after_seconds)
    return headers


def api_error_of(refused: Refused) -> ApiError:
    """A use case's refusal as the HTTP answer: its kind's status, its code and message."""
    headers = rate_headers(refused.rate) if refused.rate is not None else {}
    if refused.retry_after_seconds is not None:
        headers["Retry-After"] = str(refused.retry_after_seconds)
    return ApiError(
        REFUSAL_STATUS[refused.kind], refused.code, refused.message, refused.details, headers
    )


async def refused_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return error_response(request, api_error_of(exc))


STORE_RETRY_AFTER_S = 2  # Redis restarts in seconds; a client that waits this long may retry


async def store_unavailable_handler(request: Request, exc: Exception) -> Response:
    """A store could not be reached (Redis down, silent, or loading its data after a restart):
    503 with a Retry-After, never a 500. Nothing was accepted: the write that failed is the
    one that would have stored it. The message names no host, port or path."""
    assert isinstance(exc, StoreUnavailable)
    log.warning("store unavailable on %s %s: %s", request.method, request.url.path, exc)
    error = ApiError(
        503,
        "store_unavailable",
        "the gateway's store is unreachable; retry shortly",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )
    return error_response(request, error)


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
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path only; a path served by
        # several routes (GET and DELETE /jobs/{id}) allows all of theirs.
        headers["Allow"] = ", ".join(allowed_methods(request))
    error = ApiError(
        exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers=headers
    )
    return error_response(request, error)


def allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


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


class RequestBodyGuard:
    """Read the whole request body before the app sees it, so that no handler can be made to
    wait for it or fail on it: over ``limit`` bytes → 413 (declared or chunked), not all there
    within ``timeout_seconds`` → 408, JSON that no part of the gateway can keep (nested deeper
    than ``MAX_JSON_DEPTH``, integers beyond 64 bits, ``NaN``) → 400. The body is then handed to
    the app as one message; later ``receive`` calls (disconnect watching) pass through."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        timeout_seconds: float,
        streamed: Callable[[Scope], bool] = lambda scope: False,
    ) -> None:
        self.app, self.limit, self.timeout_seconds = app, limit, timeout_seconds
        # Requests whose route streams the body under its own limits (an upload's PUT).
        self.streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.streamed(scope):
            await self.app(scope, receive, closing_on_refusal(send))
            return
        if scope["type"] != "http" or not declares_body(scope):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send, self._too_large())
            return
        try:
            async with asyncio.timeout(self.timeout_seconds):
                body = await read_body(receive, self.limit)
        except BodyTooLarge:
            await self._refuse(scope, send, self._too_large())
            return
        except TimeoutError:
            message = f"the request body did not arrive within {self.timeout_seconds:g} s"
            await self._refuse(scope, send, ApiError(408, "request_timeout", message))
            return
        except ClientGone:
            return  # nobody to answer
        if is_json(headers.get(b"content-type")):
            problem, parsed = checked_json(body)
            if problem is not None:
                await self._refuse(scope, send, ApiError(400, "invalid_request", problem))
                return
            if parsed is not NOT_PARSED:  # a lean route reuses it (api/lean_route.py)
                scope[PARSED_JSON] = parsed
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self) -> ApiError:
        return ApiError(413, "payload_too_large", f"the body is over {self.limit} bytes")

    async def _refuse(self, scope: Scope, send: Send, error: ApiError) -> None:
        # The rest of the body may still be on its way: close the connection after answering.
        error.headers.setdefault("Connection", "close")

        async def no_body() -> Message:
            return {"type": "http.disconnect"}

        response = error_response(Request(scope), error)
        await response(scope, no_body, send)


def closing_on_refusal(send: Send) -> Send:
    """``send`` adding ``Connection: close`` to an error answer: a streamed body refused before
    it was read whole (a wrong signature, size or type) is not drained, the connection ends."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return sending


MAX_JSON_DEPTH = 64
INT64 = range(-(2**63), 2**63)


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


def declares_body(scope: Scope) -> bool:
    headers = dict(scope.get("headers", []))
    return b"transfer-encoding" in headers or headers.get(b"content-length", b"0") not in (b"0",)


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def is_json(content_type: bytes | None) -> bool:
    """Whether FastAPI will parse this body as JSON (it does when no content type is given)."""
    if not content_type:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def json_problem(body: bytes) -> str | None:
    """Why this JSON cannot be accepted, or None (malformed JSON is left to FastAPI's 400)."""
    return checked_json(body)[0]


NOT_PARSED: Any = object()


def checked_json(body: bytes) -> tuple[str | None, Any]:
    """``json_problem``, and the body's value where the fast parse read it, which is then
    exactly what ``json.loads`` gives (else ``NOT_PARSED``)."""
    # orjson first (every request with a body passes here: the stdlib parser with its hooks
    # cost ~5x more); it refuses NaN and lone surrogates, and whatever it refuses is judged by
    # the exact parser below, which names the reason. It reads an integer past 64 bits as a
    # float, so a body with 19 digits in a row (every integer outside int64 has them) goes to
    # the exact parser too.
    if _LONG_DIGITS.search(body) is not None:
        return _json_problem_exact(body), NOT_PARSED
    try:
        value = orjson.loads(body)
    except (orjson.JSONDecodeError, RecursionError):
        return _json_problem_exact(body), NOT_PARSED
    depth, too_big = _shape(value)
    if depth > MAX_JSON_DEPTH:
        return f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels", NOT_PARSED
    if too_big:
        return "integers must fit in 64 bits (-2^63 to 2^63-1)", NOT_PARSED
    return None, value


_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _shape(value: Any) -> tuple[int, bool]:
    """How deeply arrays and objects nest, and whether an integer lies outside int64."""
    deepest, too_big = 0, False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            for child in item.values() if isinstance(item, dict) else item:
                if isinstance(child, dict | list):
                    stack.append((child, depth + 1))
                elif type(child) is int and child not in INT64:
                    too_big = True
        elif type(item) is int and item not in INT64:
            too_big = True
    return deepest, too_big


def _json_problem_exact(body: bytes) -> str | None:
    def checked_int(text: str) -> int:
        if len(text) > 20 or int(text) not in INT64:
            raise _Unkeepable("integers must fit in 64 bits (-2^63 to 2^63-1)")
        return int(text)

    def no_constants(name: str) -> float:
        raise _Unkeepable(f"{name} is not a JSON number")

    try:
        value = json.loads(body, parse_int=checked_int, parse_constant=no_constants)
    except _Unkeepable as exc:
        return str(exc)
    except RecursionError:
        return f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels"
    except ValueError:
        return None
    if _shape(value)[0] > MAX_JSON_DEPTH:
        return f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels"
    return None


class _Unkeepable(ValueError):
    pass

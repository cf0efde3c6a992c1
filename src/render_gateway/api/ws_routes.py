"""``GET /ws``: queued jobs over a WebSocket — the framing only. The handshake's credentials,
text frames in and out, and the close; what the messages mean is application/socket_jobs.py.

Credentials come from ``Authorization: Bearer …`` or, for browsers (which cannot set headers
on a WebSocket), from the offered subprotocol ``bearer.<token>`` beside ``render``. Never from
the query string: uvicorn logs every handshake's path with its query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket
from pydantic import TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnect

from render_gateway.api.api_models import QueueRequest
from render_gateway.api.deps import services
from render_gateway.api.event_stream import STREAM_AUTH_RECHECK_SECONDS
from render_gateway.api.http import json_problem, json_response
from render_gateway.api.job_routes import submit_queue_body
from render_gateway.application.job_cases import Submitted
from render_gateway.application.refusals import RefusalKind, Refused
from render_gateway.application.services import GatewayServices
from render_gateway.application.socket_jobs import (
    QUEUE_FIELDS,
    Outbox,
    SocketJobs,
    SocketStats,
)
from render_gateway.auth.principal import AuthError, Principal
from render_gateway.core.ids import new_request_id
from render_gateway.stores.unavailable import StoreUnavailable

log = logging.getLogger(__name__)
router = APIRouter()

SUBPROTOCOL = "render"
BEARER_SUBPROTOCOL = "bearer."
POLICY_VIOLATION = 1008  # RFC 6455: credentials refused (or no longer valid)
TRY_AGAIN_LATER = 1013  # the key store could not be asked
INTERNAL_ERROR = 1011
CLOSE_REASONS = {
    POLICY_VIOLATION: "credentials no longer accepted",
    TRY_AGAIN_LATER: "credentials cannot be checked now; reconnect shortly",
}
FLUSH_SECONDS = 1.0  # how long a closing connection waits for its last messages to go out
_QUEUE_BODY: TypeAdapter[Any] = TypeAdapter(QueueRequest)


def socket_stats(websocket: WebSocket) -> SocketStats:
    stats = getattr(websocket.app.state, "socket_stats", None)
    if stats is None:
        stats = websocket.app.state.socket_stats = SocketStats()
    assert isinstance(stats, SocketStats)
    return stats


def credentials_of(websocket: WebSocket) -> str | None:
    """The ``Authorization`` header's value, or one built from a ``bearer.<token>``
    subprotocol (the token itself is never echoed back, logged or stored)."""
    header = websocket.headers.get("authorization")
    if header:
        return header
    for offered in websocket.scope.get("subprotocols", []):
        if isinstance(offered, str) and offered.startswith(BEARER_SUBPROTOCOL):
            return "Bearer " + offered[len(BEARER_SUBPROTOCOL) :]
    return None


def validation_refusal(exc: ValidationError) -> Refused:
    """POST /queue's 400 for a body the model refuses, its fields named as the message has
    them (``request.prompt``; routing fields beside ``request``)."""
    problems = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        if loc and loc[0] in ("t2i", "i2i", "edit", "t2v", "i2v"):
            loc = loc[1:]  # the body's branch (its task), not a field
        if loc and loc[0] not in QUEUE_FIELDS:
            loc = ["request", *loc]
        problems.append({"field": ".".join(loc), "message": error["msg"]})
    message = "; ".join(f"{p['field'] or 'message'}: {p['message']}" for p in problems)
    return Refused(RefusalKind.invalid, "invalid_request", message, {"problems": problems})


async def refuse_handshake(websocket: WebSocket, status: int, code: str, message: str) -> None:
    """Turn the handshake down with the HTTP error body (401, 503), or close 1008 where the
    server cannot send a response to a handshake."""
    body = {"error": code, "message": message, "request_id": new_request_id(), "details": {}}
    headers = {"WWW-Authenticate": 'Bearer realm="render"'} if status == 401 else {}
    try:
        await websocket.send_denial_response(json_response(body, status, headers))
    except RuntimeError:
        await websocket.close(POLICY_VIOLATION, code)


@router.websocket("/ws")
async def jobs_socket(websocket: WebSocket) -> None:
    svc = services(websocket)
    credentials = credentials_of(websocket)
    try:
        principal = await svc.authenticator.authenticate(credentials)
    except AuthError as exc:
        await refuse_handshake(websocket, 401, exc.code, exc.message)
        return
    except StoreUnavailable:
        await refuse_handshake(
            websocket, 503, "store_unavailable", "the gateway's store is unreachable; retry"
        )
        return
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)

    async def submit(body: dict[str, Any], request_id: str) -> Submitted:
        try:
            validated = _QUEUE_BODY.validate_python(body)
        except ValidationError as exc:
            raise validation_refusal(exc) from None
        return await submit_queue_body(websocket, principal, validated, request_id)

    stats = socket_stats(websocket)
    outbox = Outbox()
    jobs = SocketJobs(svc.job_cases, submit, principal, outbox, stats)
    stats.connections += 1
    tasks = [
        asyncio.create_task(_read(websocket, jobs, outbox, svc.config.max_body_bytes)),
        asyncio.create_task(_write(websocket, outbox)),
        asyncio.create_task(_recheck(svc, credentials, principal, outbox)),
    ]
    close_code: int | None = None
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.cancelled():
                continue
            if (failure := task.exception()) is not None:
                log.error("websocket connection failed", exc_info=failure)
                close_code = INTERNAL_ERROR
            elif (code := task.result()) is not None:
                close_code = code
    finally:
        reader, writer, checker = tasks
        reader.cancel()
        checker.cancel()
        await jobs.close()  # relays stop; the jobs go on, pollable at GET /jobs/{id}
        if close_code is not None and not writer.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(outbox.drained(), FLUSH_SECONDS)  # the last error
        writer.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        stats.connections -= 1
    if close_code is not None:
        with contextlib.suppress(Exception):  # the client may have gone meanwhile
            await websocket.close(close_code, CLOSE_REASONS.get(close_code, ""))


async def _read(websocket: WebSocket, jobs: SocketJobs, outbox: Outbox, limit: int) -> None:
    """Each text frame to ``jobs``, in order; reading waits while the outbox is full, so a
    client that sends but never reads is slowed down, not buffered without end."""
    while True:
        await outbox.room()
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            jobs.refuse("invalid_request", "send text frames holding JSON messages")
            continue
        if len(text) > limit:
            jobs.refuse("payload_too_large", f"a message is at most {limit} bytes")
            continue
        if (problem := json_problem(text.encode())) is not None:
            jobs.refuse("invalid_request", problem)
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            jobs.refuse("invalid_request", "a message is one JSON object")
            continue
        await jobs.handle(value)


async def _write(websocket: WebSocket, outbox: Outbox) -> None:
    while True:
        message = await outbox.get()
        try:
            await websocket.send_text(orjson.dumps(message).decode())
        except Exception:  # the client has gone (a disconnect, a reset): nothing to send to
            return


async def _recheck(
    svc: GatewayServices, credentials: str | None, principal: Principal, outbox: Outbox
) -> int:
    """As the SSE streams do: ask again every few seconds whether the caller is still let
    in (a revoked key, an expired token); the close code when not."""
    while True:
        await asyncio.sleep(STREAM_AUTH_RECHECK_SECONDS)
        try:
            now = await svc.authenticator.authenticate(credentials)
        except AuthError as exc:
            outbox.put({"type": "error", "id": None, "error": exc.code, "message": exc.message})
            return POLICY_VIOLATION
        except StoreUnavailable:
            outbox.put(
                {"type": "error", "id": None, "error": "store_unavailable",
                 "message": "the gateway's store is unreachable; reconnect shortly"}
            )  # fmt: skip
            return TRY_AGAIN_LATER
        if now.customer_id != principal.customer_id:
            outbox.put(
                {"type": "error", "id": None, "error": "invalid_credentials",
                 "message": "the credentials now name another customer"}
            )  # fmt: skip
            return POLICY_VIOLATION

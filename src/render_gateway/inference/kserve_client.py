"""An asyncio KServe v2 client for the gateway → backend hop (aiohttp: its per-request CPU cost
is a fraction of httpx's, see docs/BENCHMARKS.md).

It sends the generation JSON as the BYTES input ``request`` and reads the outputs with Triton's
binary tensor extension, or follows ``generate_stream`` (SSE) for real progress. Failures become
``BackendError`` with ``retriable`` set for what a retry on any backend may fix: connection
errors, timeouts, 429, 500, 502, 503 and 504.

A ``BackendError``'s text is what the customer sees (the job's ``error.message``, the sync
answer): a code the backend gave only when it looks like one, and a short message: the
backend's own for a refused request (4xx: what to fix), a fixed one for its failures (5xx: a
Triton error may carry a Python traceback and server paths). Everything the backend said goes
to this module's log as ``detail``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp.http_exceptions import HttpProcessingError

from render_gateway.inference.backend import (
    BackendError,
    BackendResult,
    Cancelled,
    Progress,
    StreamEvent,
    public_code,
    public_message,
)
from render_gateway.kserve import codec

RETRIABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
REQUEST_INPUT = "request"

log = logging.getLogger(__name__)


def _result(response: codec.InferResponse, request_id: str) -> BackendResult:
    if not response.outputs:
        raise BackendError("the backend answered with no outputs", retriable=False)
    tensor = response.outputs[0]
    if tensor.datatype != "BYTES" or not isinstance(tensor.data, list):
        raise BackendError(f"output {tensor.name!r} is not BYTES", retriable=False)
    content_type = tensor.parameters.get("content_type") or response.parameters.get(
        "content_type", "application/octet-stream"
    )
    return BackendResult(
        request_id=response.id or request_id,
        outputs=[bytes(e) for e in tensor.data],
        content_type=str(content_type),
        parameters=response.parameters,
    )


def _failure_code(exc: BaseException) -> str:
    """``timeout`` when the run outlived its deadline (metered as a timeout, never billed)."""
    return "timeout" if isinstance(exc, TimeoutError) else "backend_error"


def _unreachable_message(exc: BaseException) -> str:
    # Not the exception's text: it names the backend's address.
    if isinstance(exc, TimeoutError):
        return "the backend did not finish in time"
    return "the backend could not be reached"


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status == 200:
        return
    text = await response.text(errors="replace")
    code, message = "backend_error", ""
    try:
        body = orjson.loads(text)
        if isinstance(body, dict):
            code = public_code(body.get("error"))
            message = str(body.get("message", ""))
    except orjson.JSONDecodeError:
        pass
    # The whole answer (bounded) for operators; the customer gets the public part.
    log.warning("backend %s answered %d: %s", response.url.origin(), response.status, text[:4000])
    raise BackendError(
        public_message(response.status, code, message),
        status=response.status,
        code=code,
        retriable=response.status in RETRIABLE_STATUSES,
        retry_after=_retry_after(response.headers),
    )


class KServeClient:
    """One backend's endpoint; the session (connection pool) is shared and owned by the caller."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base = base_url.rstrip("/")

    async def ready(self, probe_seconds: float = 2.0) -> bool:
        try:
            async with self._session.get(
                self._base + "/v2/health/ready", timeout=aiohttp.ClientTimeout(total=probe_seconds)
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def node_key(self, probe_seconds: float = 2.0) -> tuple[str, bytes] | None:
        """(key id, raw Ed25519 public key) from ``GET /v2/node``; None for a backend without
        one (a plain Triton server) or on any failure."""
        try:
            async with self._session.get(
                self._base + "/v2/node", timeout=aiohttp.ClientTimeout(total=probe_seconds)
            ) as response:
                if response.status != 200:
                    return None
                body = await response.json(loads=orjson.loads)
            raw = base64.b64decode(body["public_key"], validate=True)
            return str(body["key_id"]), raw
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            return None

    async def model_metadata(self, model: str, probe_seconds: float = 5.0) -> dict[str, Any] | None:
        """``GET /v2/models/{model}`` (KServe v2 model metadata); None on any failure."""
        try:
            async with self._session.get(
                f"{self._base}/v2/models/{model}",
                timeout=aiohttp.ClientTimeout(total=probe_seconds),
            ) as response:
                if response.status != 200:
                    return None
                body = await response.json(loads=orjson.loads, content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    async def infer(
        self, model: str, generation: bytes, request_id: str, run_seconds: float = 600.0
    ) -> BackendResult:
        """One run; outputs come back in binary form."""
        request = codec.InferRequest(
            inputs=(codec.Tensor(REQUEST_INPUT, "BYTES", (1,), [generation]),),
            id=request_id,
            parameters={"binary_data_output": True},
        )
        body, _ = codec.encode_request(request)
        try:
            async with self._session.post(
                f"{self._base}/v2/models/{model}/infer",
                data=body,
                headers={"Content-Type": codec.JSON_CONTENT_TYPE},
                timeout=aiohttp.ClientTimeout(total=run_seconds),
            ) as response:
                await _raise_for_status(response)
                payload = await response.read()
                length = codec.parse_header_length(response.headers.get(codec.HEADER_LENGTH))
        except (aiohttp.ClientError, HttpProcessingError, TimeoutError) as exc:
            log.warning("backend %s unreachable: %r", self._base, exc)
            raise BackendError(
                _unreachable_message(exc), code=_failure_code(exc), retriable=True
            ) from exc
        try:
            return _result(codec.decode_response(payload, length), request_id)
        except codec.ProtocolError as exc:
            raise BackendError(f"backend broke the protocol: {exc}", retriable=False) from exc

    async def generate_stream(
        self, model: str, generation: bytes, request_id: str, run_seconds: float = 600.0
    ) -> AsyncIterator[StreamEvent]:
        """Progress events, then the result (or Cancelled). Closing the iterator early closes
        the connection, which the reference worker takes as a cancel."""
        body = orjson.dumps({REQUEST_INPUT: generation.decode(), "id": request_id})
        try:
            async with self._session.post(
                f"{self._base}/v2/models/{model}/generate_stream",
                data=body,
                headers={"Content-Type": codec.JSON_CONTENT_TYPE, "Accept": "text/event-stream"},
                timeout=aiohttp.ClientTimeout(total=run_seconds),
            ) as response:
                await _raise_for_status(response)
                async for event, data in _sse(response):
                    parsed = _stream_event(event, data, request_id)
                    if parsed is not None:
                        yield parsed
                        if not isinstance(parsed, Progress):
                            return
        except (aiohttp.ClientError, HttpProcessingError, TimeoutError) as exc:
            log.warning("backend %s stream broke: %r", self._base, exc)
            raise BackendError(
                _unreachable_message(exc), code=_failure_code(exc), retriable=True
            ) from exc
        raise BackendError("the backend's stream ended without a result", retriable=True)

    async def cancel(self, model: str, request_id: str) -> bool:
        """Ask the backend to stop a run (a Render extension); False if it has no such run."""
        try:
            async with self._session.delete(
                f"{self._base}/v2/models/{model}/requests/{request_id}",
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response:
                return response.status == 204
        except (aiohttp.ClientError, TimeoutError):
            return False


MAX_EVENT_BYTES = 512 * 1024 * 1024  # a result event carries the outputs, base64


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Lines of any length (aiohttp's own line reader stops at 512 KiB; a result line holding a
    base64 image is longer), up to MAX_EVENT_BYTES."""
    buffer = bytearray()
    searched = 0
    async for chunk in response.content.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n", searched)) >= 0:
            yield bytes(buffer[:end])
            del buffer[: end + 1]
            searched = 0
        searched = len(buffer)
        if searched > MAX_EVENT_BYTES:
            raise BackendError("the backend sent an event over the size limit", retriable=False)
    if buffer:
        yield bytes(buffer)


async def _sse(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    event, data = "message", list[str]()
    async for raw in _lines(response):
        line = raw.decode().rstrip("\r")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def _stream_event(event: str, data: str, request_id: str) -> StreamEvent | None:
    try:
        body: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BackendError(f"backend sent invalid JSON in {event!r}", retriable=False) from exc
    if not isinstance(body, dict):
        raise BackendError(f"backend sent a non-object {event!r} event", retriable=False)
    if event == "progress":
        used = body.get("gpu_seconds")
        gpu_seconds = float(used) if isinstance(used, int | float) and used >= 0 else None
        return Progress(int(body["step"]), int(body["steps"]), float(body["progress"]), gpu_seconds)
    if event in ("result", "message"):
        try:
            return _result(codec.response_from_json(body), request_id)
        except codec.ProtocolError as exc:
            raise BackendError(f"backend broke the protocol: {exc}", retriable=False) from exc
    if event == "cancelled":
        params = body.get("parameters", {})
        return Cancelled(request_id, params if isinstance(params, dict) else {})
    if event == "error":
        code = public_code(body.get("error"))
        log.warning("backend error event for %s: %s", request_id, data[:4000])
        # Input refusals are final; anything else the backend hit may go better elsewhere.
        raise BackendError(
            public_message(None, code, str(body.get("message", ""))),
            code=code,
            retriable=code != "invalid_request",
        )
    return None

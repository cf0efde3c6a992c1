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

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
from aiohttp.http_exceptions import HttpProcessingError

from render_gateway.inference.attribution import Attribution, Bracket, QueueReading
from render_gateway.inference.backend import (
    MODEL_ERROR,
    MODEL_ERROR_MESSAGE,
    BackendError,
    BackendResult,
    Cancelled,
    Progress,
    StreamEvent,
    is_model_failure,
    public_code,
    public_message,
)
from render_gateway.inference.outputs import (
    OutputPlan,
    OutputPlans,
    is_progress,
    progress_values,
    read_result,
    to_progress,
)
from render_gateway.kserve import codec

RETRIABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
REQUEST_INPUT = "request"
# The most of an answer read into memory: an infer answer, or one stream event (a result event
# carries the outputs, base64). A backend sending more is cut off, not buffered without end.
MAX_ANSWER_BYTES = 512 * 1024 * 1024
# Of metadata or statistics (a few KiB) no more than this is read.
MAX_PROBE_BYTES = 16 * 1024 * 1024
# Of an error answer only this much is read (for the log and the code): a traceback fits.
MAX_ERROR_BYTES = 64 * 1024

log = logging.getLogger(__name__)


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


def error_fields(text: str) -> tuple[str, str]:
    """(code, message) of a backend's error body: Render's worker sends ``code`` and
    ``message`` (and, as Triton does, the message in ``error``); Triton and KServe send only
    ``{"error": "<message>"}``, whose text becomes the message when it is not a code."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "backend_error", text
    if not isinstance(body, dict):
        return "backend_error", ""
    error = body.get("error")
    code = public_code(body.get("code"), public_code(error))
    message = body.get("message")
    if not isinstance(message, str):
        message = "" if error is None or public_code(error, "") else str(error)
    return code, message


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status == 200:
        return
    text = (await response.content.read(MAX_ERROR_BYTES)).decode(errors="replace")
    code, message = error_fields(text)
    # The whole answer (bounded) for operators; the customer gets the public part.
    log.warning("backend %s answered %d: %s", response.url.origin(), response.status, text[:4000])
    if response.status >= 500 and is_model_failure(message):
        raise BackendError(
            MODEL_ERROR_MESSAGE, status=response.status, code=MODEL_ERROR, retriable=False
        )
    raise BackendError(
        public_message(response.status, code, message),
        status=response.status,
        code=code,
        retriable=response.status in RETRIABLE_STATUSES,
        retry_after=_retry_after(response.headers),
    )


class KServeClient:
    """One backend's endpoint; the session (connection pool) is shared and owned by the caller.
    ``output`` is the backend's media output name (None: the convention's default)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        output: str | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._session = session
        self._max_answer_bytes = max_answer_bytes
        self._base = base_url.rstrip("/")
        self._plans = OutputPlans(output, self.model_metadata)
        self._attribution = Attribution(self._queue_reading)

    async def ready(self, probe_seconds: float = 2.0) -> bool:
        try:
            async with self._session.get(
                self._base + "/v2/health/ready",
                timeout=aiohttp.ClientTimeout(total=probe_seconds),
                allow_redirects=False,
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def node_key(self, probe_seconds: float = 2.0) -> tuple[str, bytes] | None:
        """(key id, raw Ed25519 public key) from ``GET /v2/node``; None for a backend without
        one (a plain Triton server) or on any failure."""
        try:
            async with self._session.get(
                self._base + "/v2/node",
                timeout=aiohttp.ClientTimeout(total=probe_seconds),
                allow_redirects=False,
            ) as response:
                if response.status != 200:
                    return None
                body = await response.json(loads=orjson.loads)
            raw = base64.b64decode(body["public_key"], validate=True)
            return str(body["key_id"]), raw
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            return None

    async def _get_json(self, path: str, probe_seconds: float) -> dict[str, Any] | None:
        try:
            async with self._session.get(
                self._base + path,
                timeout=aiohttp.ClientTimeout(total=probe_seconds),
                allow_redirects=False,
            ) as response:
                if response.status != 200:
                    return None
                body = orjson.loads(await _read_bounded(response, MAX_PROBE_BYTES))
        except (aiohttp.ClientError, TimeoutError, ValueError, BackendError):
            return None
        return body if isinstance(body, dict) else None

    async def model_metadata(self, model: str, probe_seconds: float = 5.0) -> dict[str, Any] | None:
        """``GET /v2/models/{model}`` (KServe v2 model metadata); None on any failure."""
        metadata = await self._get_json(f"/v2/models/{model}", probe_seconds)
        if metadata is not None:
            self._plans.learned(model, metadata)
        return metadata

    async def _queue_reading(self, model: str) -> QueueReading | None:
        """The model's cumulative queue time and success count (Triton's statistics
        extension)."""
        return queue_reading(await self._get_json(f"/v2/models/{model}/stats", 2.0))

    async def infer(
        self, model: str, generation: bytes, request_id: str, run_seconds: float = 600.0
    ) -> BackendResult:
        """One run; the outputs the convention names are asked for in binary form."""
        plan = await self._plans.plan(model)
        request = codec.InferRequest(
            inputs=(codec.Tensor(REQUEST_INPUT, "BYTES", (1,), [generation]),),
            id=request_id,
            parameters={"binary_data_output": True},
            outputs=tuple(codec.RequestedOutput(name, binary=True) for name in plan.requested),
        )
        body, _ = codec.encode_request(request)
        bracket = await self._attribution.open(model)
        try:
            async with self._session.post(
                f"{self._base}/v2/models/{model}/infer",
                data=body,
                headers={"Content-Type": codec.JSON_CONTENT_TYPE},
                timeout=aiohttp.ClientTimeout(total=run_seconds),
                allow_redirects=False,
            ) as response:
                await _raise_for_status(response)
                bracket.ran()  # answered: the backend counts it among its successes
                payload = await _read_bounded(response, self._max_answer_bytes)
                length_header = response.headers.get(codec.HEADER_LENGTH)
        except asyncio.CancelledError:
            bracket.ran()  # HTTP cannot stop a Triton run: it runs on without us
            raise
        except (aiohttp.ClientError, HttpProcessingError, TimeoutError) as exc:
            _ran_unless_never_sent(bracket, exc)
            raise _unreachable(self._base, exc) from exc
        try:
            length = codec.parse_header_length(length_header)
            result = read_result(codec.decode_response(payload, length), plan, request_id)
        except codec.ProtocolError as exc:
            raise broke_protocol(self._base, exc) from exc
        return await attributed(result, bracket, self._attribution, model)

    async def generate_stream(
        self, model: str, generation: bytes, request_id: str, run_seconds: float = 600.0
    ) -> AsyncIterator[StreamEvent]:
        """Progress events, then the result (or Cancelled). Closing the iterator early closes
        the connection, which the reference worker takes as a cancel. Reads Render's events
        (``progress``, ``result``, ``cancelled``, ``error``) and Triton's (unnamed events whose
        JSON holds the outputs by name; a response without the media output is progress)."""
        plan = await self._plans.plan(model)
        body = orjson.dumps({REQUEST_INPUT: generation.decode(), "id": request_id})
        bracket = await self._attribution.open(model)
        try:
            async with self._session.post(
                f"{self._base}/v2/models/{model}/generate_stream",
                data=body,
                headers={"Content-Type": codec.JSON_CONTENT_TYPE, "Accept": "text/event-stream"},
                timeout=aiohttp.ClientTimeout(total=run_seconds),
                allow_redirects=False,
            ) as response:
                await _raise_for_status(response)
                bracket.ran()  # accepted: it runs to its end even if we stop reading
                async for event, data in _sse(response, self._max_answer_bytes):
                    parsed = _stream_event(event, data, request_id, plan)
                    if parsed is None:
                        continue
                    if isinstance(parsed, Progress):
                        bracket.responded()
                        yield parsed
                        continue
                    if isinstance(parsed, BackendResult):
                        yield await attributed(parsed, bracket, self._attribution, model)
                    else:
                        yield Cancelled(
                            parsed.request_id, parsed.parameters, bracket.since_first_response()
                        )
                    return
        except asyncio.CancelledError:
            bracket.ran()
            raise
        except (aiohttp.ClientError, HttpProcessingError, TimeoutError) as exc:
            _ran_unless_never_sent(bracket, exc)
            raise _unreachable(self._base, exc) from exc
        raise BackendError("the backend's stream ended without a result", retriable=True)

    async def cancel(self, model: str, request_id: str) -> bool:
        """Ask the backend to stop a run (a Render extension); False if it has no such run."""
        try:
            async with self._session.delete(
                f"{self._base}/v2/models/{model}/requests/{request_id}",
                timeout=aiohttp.ClientTimeout(total=5),
                allow_redirects=False,
            ) as response:
                return response.status == 204
        except (aiohttp.ClientError, TimeoutError):
            return False


def _ran_unless_never_sent(bracket: Bracket, exc: BaseException) -> None:
    """A transport failure after the request went out leaves a run the backend goes on with
    (its count of runs will show it); one that never connected left none."""
    if not isinstance(exc, aiohttp.ClientConnectorError):
        bracket.ran()


def _unreachable(base: str, exc: BaseException) -> BackendError:
    """A transport failure. A timeout is final: the run had all its time, and running it again
    elsewhere would outlive the job's deadline; anything else may go better on a retry."""
    log.warning("backend %s unreachable or broke off: %r", base, exc)
    timed_out = isinstance(exc, TimeoutError)
    return BackendError(_unreachable_message(exc), code=_failure_code(exc), retriable=not timed_out)


def broke_protocol(base: str, exc: Exception) -> BackendError:
    """An answer that cannot be read: the model may have run, so it is not sent again (the
    request ends in an error, recorded once)."""
    log.warning("backend %s broke the protocol: %s", base, exc)
    return BackendError(
        "the backend's answer could not be read", code="backend_protocol", retriable=False
    )


def queue_reading(stats: Mapping[str, Any] | None) -> QueueReading | None:
    """``model_stats[0].inference_stats``' ``queue.ns`` and ``success.count`` of a statistics
    answer; None without a queue time, ``succeeded`` None without a readable count."""
    try:
        inference = stats["model_stats"][0]["inference_stats"]  # type: ignore[index]
        queue = _count(inference["queue"]["ns"])
    except (KeyError, IndexError, TypeError):
        return None
    if queue is None:
        return None
    try:
        succeeded = _count(inference["success"]["count"])
    except (KeyError, TypeError):
        succeeded = None
    return QueueReading(queue, succeeded)


def _count(value: Any) -> int | None:
    """A JSON counter: a non-negative integer (Triton writes them as numbers), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number >= 0 else None


async def attributed(
    result: BackendResult, bracket: Bracket, attribution: Attribution, model: str
) -> BackendResult:
    """The result with the seconds attributable to it when the backend reported none."""
    reported = result.gpu_seconds is not None
    attribution.learned(model, reported)
    if reported:
        bracket.ran()
        return result
    return replace(result, attributed_seconds=await bracket.seconds())


def _too_big() -> BackendError:
    return BackendError(
        "the backend's answer is over the size limit", code="backend_protocol", retriable=False
    )


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or the size-limit error once it passes ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise _too_big()
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise _too_big()
    return bytes(body)


async def _lines(response: aiohttp.ClientResponse, limit: int) -> AsyncIterator[bytes]:
    """Lines of any length (aiohttp's own line reader stops at 512 KiB; a result line holding a
    base64 image is longer), up to ``limit`` bytes."""
    buffer = bytearray()
    searched = 0
    async for chunk in response.content.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n", searched)) >= 0:
            yield bytes(buffer[:end])
            del buffer[: end + 1]
            searched = 0
        searched = len(buffer)
        if searched > limit:
            raise _too_big()
    if buffer:
        yield bytes(buffer)


async def _sse(
    response: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES
) -> AsyncIterator[tuple[str, bytes]]:
    """(event name, data) per event. Data stays bytes: Triton's generate_stream writes a BYTES
    output's raw bytes (a PNG) into its JSON text, which is not UTF-8. An event is at most
    ``limit`` bytes, however many ``data:`` lines it is split into."""
    event, data, size = "message", list[bytes](), 0
    async for raw in _lines(response, limit):
        line = raw.rstrip(b"\r")
        if not line:
            if data:
                yield event, b"\n".join(data)
            event, data, size = "message", [], 0
        elif line.startswith(b":"):
            continue
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode(errors="replace")
        elif line.startswith(b"data:"):
            data.append(line[5:].lstrip())
            size += len(line)
            if size > limit:
                raise _too_big()
    if data:
        yield event, b"\n".join(data)


def _stream_event(event: str, data: bytes, request_id: str, plan: OutputPlan) -> StreamEvent | None:
    try:
        body: Any = loads_lenient(data)
    except ValueError as exc:
        raise BackendError(
            f"backend sent invalid JSON in {event!r}", code="backend_protocol", retriable=False
        ) from exc
    if not isinstance(body, dict):
        raise BackendError(
            f"backend sent a non-object {event!r} event", code="backend_protocol", retriable=False
        )
    try:
        return _parse_event(event, body, request_id, plan)
    except (codec.ProtocolError, KeyError, TypeError, ValueError, OverflowError) as exc:
        log.warning("backend stream event %r for %s unreadable: %s", event, request_id, exc)
        raise BackendError(
            "the backend's answer could not be read", code="backend_protocol", retriable=False
        ) from exc


def _parse_event(
    event: str, body: dict[str, Any], request_id: str, plan: OutputPlan
) -> StreamEvent | None:
    if event == "progress":
        return to_progress(body)
    if event == "cancelled":
        params = valid_text(body.get("parameters", {}))
        return Cancelled(request_id, params if isinstance(params, dict) else {})
    if event == "error" or (event == "message" and "error" in body and "outputs" not in body):
        code, message = error_fields(orjson.dumps(valid_text(body)).decode())
        log.warning("backend error event for %s: %s", request_id, str(body)[:4000])
        if is_model_failure(message):  # Triton's word for the model's own failure: final
            raise BackendError(MODEL_ERROR_MESSAGE, code=MODEL_ERROR, retriable=False)
        # Input refusals are final; anything else the backend hit may go better elsewhere.
        raise BackendError(
            public_message(None, code, message), code=code, retriable=code != "invalid_request"
        )
    if event not in ("result", "message"):
        return None
    response = (
        codec.response_from_json(valid_text(body)) if "outputs" in body else generate_response(body)
    )
    if is_progress(response, plan):
        return to_progress(progress_values(response))
    return read_result(response, plan, request_id)


_GENERATE_META = frozenset({"model_name", "model_version", "id", "parameters"})


def generate_response(body: Mapping[str, Any]) -> codec.InferResponse:
    """Triton's generate-extension answer (outputs by name at the top level) as a response:
    a string is a BYTES element (raw bytes; base64 when the ``parameters`` say
    ``content_encoding: base64`` — Render's worker), a number or list of numbers FP64/INT64."""
    parameters = valid_text(body.get("parameters"))
    params = dict(parameters) if isinstance(parameters, dict) else {}
    base64_text = params.get("content_encoding") == "base64"
    outputs: list[codec.Tensor] = []
    for name, value in body.items():
        if name in _GENERATE_META:
            continue
        values = value if isinstance(value, list) else [value]
        if all(isinstance(v, str) for v in values):
            data = [
                base64.b64decode(v) if base64_text else v.encode("utf-8", "surrogateescape")
                for v in values
            ]
            outputs.append(codec.Tensor(name, "BYTES", (len(data),), data))
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            kind = "INT64" if all(isinstance(v, int) for v in values) else "FP64"
            outputs.append(codec.Tensor(name, kind, (len(values),), list(values)))
    model_name, version, response_id = valid_text(
        [body.get("model_name"), body.get("model_version"), body.get("id")]
    )
    return codec.InferResponse(
        model_name=str(model_name or ""),
        outputs=tuple(outputs),
        model_version=str(version) if version is not None else None,
        id=str(response_id) if response_id is not None else None,
        parameters={k: v for k, v in params.items() if isinstance(v, bool | int | float | str)},
    )


def valid_text(value: Any) -> Any:
    """``value`` with every string made valid Unicode (U+FFFD for the surrogates that
    ``loads_lenient`` leaves for raw bytes). Only a BYTES output's value may keep raw bytes;
    a surrogate anywhere else — a claim, a message, an id — would make the job or the usage
    record that carries it unstorable (orjson refuses surrogates)."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        return value
    if isinstance(value, list):
        return [valid_text(v) for v in value]
    if isinstance(value, dict):
        return {valid_text(k): valid_text(v) for k, v in value.items()}
    return value


def loads_lenient(data: bytes) -> Any:
    """JSON from bytes that may hold raw non-UTF-8 bytes inside strings (Triton's generate
    answers for a BYTES output); such bytes come back as surrogate escapes, which
    ``str.encode("utf-8", "surrogateescape")`` turns back into the bytes sent."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data.decode("utf-8", "surrogateescape"), strict=False)

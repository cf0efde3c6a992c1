"""An asyncio KServe v2 client over gRPC (a backend ``endpoint = "grpc://host:port"``): Triton's
own protocol, with the stubs Triton ships (``tritonclient.grpc``) on grpcio's asyncio channel.

What gRPC gives that HTTP cannot: **cancellation that reaches the server**. The dispatcher
stops a run by cancelling the task awaiting the call; grpcio then cancels the RPC (an HTTP/2
RST_STREAM), and Triton marks the request cancelled — a queued request is dropped, a running
Python model sees ``request.is_cancelled()``, Render's worker stops its pipeline at the next
step. A deadline (the run timeout) travels with the call, so the server stops at it as well.
So ``cancel()`` answers False: there is no separate cancel message, the RPC's cancellation is
it.

Streaming (``streaming = true``) uses ``ModelStreamInfer``, Triton's decoupled stream: one
request, then responses; one without the media output is progress (``step``/``steps`` as
parameters or INT64 outputs), the one with it is the result.

Failures become ``BackendError``: INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
FAILED_PRECONDITION, OUT_OF_RANGE and UNIMPLEMENTED are the request's fault (final, no breaker
verdict); UNAVAILABLE, RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN, ABORTED, DATA_LOSS and CANCELLED
by the server may go better elsewhere; DEADLINE_EXCEEDED is the run's timeout (final). Render's
worker puts its error code in the trailing metadata ``render-code``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from render_gateway.inference.attribution import Attribution, QueueReading
from render_gateway.inference.backend import (
    MODEL_ERROR,
    MODEL_ERROR_MESSAGE,
    BackendError,
    BackendResult,
    StreamEvent,
    is_model_failure,
    public_code,
    public_message,
)
from render_gateway.inference.kserve_client import REQUEST_INPUT, attributed
from render_gateway.inference.outputs import (
    OutputPlan,
    OutputPlans,
    is_progress,
    progress_values,
    read_result,
    to_progress,
)
from render_gateway.kserve import codec, grpc_codec

log = logging.getLogger(__name__)

GRPC_SCHEME = "grpc://"
MAX_MESSAGE_BYTES = 512 * 1024 * 1024  # a video output; grpcio's default receive limit is 4 MiB
CODE_METADATA = "render-code"
_TOO_LARGE = "Received message larger than max"  # grpcio's details for the receive limit

# The status an HTTP backend would have answered, for the customer-facing mapping.
_REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_RETRIABLE = {
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.ABORTED: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.CANCELLED: 503,
}


def grpc_target(endpoint: str) -> str:
    """``host:port`` of a ``grpc://host:port`` endpoint."""
    if not endpoint.startswith(GRPC_SCHEME):
        raise ValueError(f"not a gRPC endpoint: {endpoint!r}")
    return endpoint[len(GRPC_SCHEME) :].rstrip("/")


def _render_code(error: grpc.aio.AioRpcError) -> str | None:
    for key, value in error.trailing_metadata() or ():
        if key == CODE_METADATA:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def _backend_error(error: grpc.aio.AioRpcError, target: str) -> BackendError:
    status = error.code()
    details = error.details() or ""
    log.warning("backend grpc://%s answered %s: %s", target, status.name, details[:4000])
    if status is grpc.StatusCode.DEADLINE_EXCEEDED:
        return BackendError("the backend did not finish in time", code="timeout", retriable=False)
    if status is grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE in details:
        # grpcio's own refusal of an answer over the receive limit: the model ran, and would
        # answer as much again elsewhere — not a busy server.
        return BackendError(
            "the backend's answer is over the size limit", code="backend_protocol", retriable=False
        )
    code = public_code(_render_code(error))
    if status in _REFUSED:
        http = _REFUSED[status]
        return BackendError(
            public_message(http, code, details), status=http, code=code, retriable=False
        )
    http = _RETRIABLE.get(status, 500)
    if is_model_failure(details):
        return BackendError(MODEL_ERROR_MESSAGE, status=http, code=MODEL_ERROR, retriable=False)
    if status is grpc.StatusCode.UNAVAILABLE and _render_code(error) is None:
        # grpcio's own word for a connection it could not make or lost (a server that is
        # down); Render's worker says busy/not ready with its code.
        return BackendError("the backend could not be reached", retriable=True)
    return BackendError(public_message(http, code, details), status=http, code=code, retriable=True)


def _stream_error(message: Any, target: str) -> BackendError:
    """An error response inside a ModelStreamInfer stream: Triton's text, no status (Render's
    worker adds its code as the parameter ``render_code``). A refused request or a model's own
    failure is final; anything else the backend hit (busy, a failed run) may go better
    elsewhere, as for the HTTP stream's error event."""
    text = message.error_message
    log.warning("backend grpc://%s stream error: %s", target, text[:4000])
    if is_model_failure(text):
        return BackendError(MODEL_ERROR_MESSAGE, code=MODEL_ERROR, retriable=False)
    parameters = grpc_codec.parameters_from_proto(message.infer_response.parameters)
    code = public_code(parameters.get("render_code"))
    refused = code in ("invalid_request", "invalid_tensor", "model_not_found", "payload_too_large")
    status = 400 if refused else (503 if code == "busy" else None)
    if code == "backend_error":  # Triton's stream: a bare message, most often about the request
        return BackendError(public_message(None, code, text), code=code, retriable=False)
    return BackendError(
        public_message(status, code, text), status=status, code=code, retriable=not refused
    )


class NodeKeySource(Protocol):
    async def node_key(self, probe_seconds: float = 2.0) -> tuple[str, bytes] | None: ...


class KServeGrpcClient:
    """One backend's gRPC endpoint. The channel is made on first use (in the running loop)
    and closed by ``close()``."""

    def __init__(
        self,
        endpoint: str,
        output: str | None = None,
        node_keys: NodeKeySource | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._target = grpc_target(endpoint)
        self._max_message_bytes = max_message_bytes
        self._node_keys = node_keys
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._plans = OutputPlans(output, self.model_metadata)
        self._attribution = Attribution(self._queue_reading)

    def _service(self) -> Any:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self._target,
                options=[
                    ("grpc.max_receive_message_length", self._max_message_bytes),
                    ("grpc.max_send_message_length", self._max_message_bytes),
                ],
            )
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None

    async def ready(self, probe_seconds: float = 2.0) -> bool:
        try:
            answer = await self._service().ServerReady(
                pb.ServerReadyRequest(), timeout=probe_seconds
            )
        except grpc.aio.AioRpcError:
            return False
        return answer is not None and bool(answer.ready)  # None: see _unreadable

    async def node_key(self, probe_seconds: float = 2.0) -> tuple[str, bytes] | None:
        """KServe v2 over gRPC has no place for a node key: it is read over HTTP from the
        backend's ``node_url`` (Render's worker, ``GET /v2/node``); without one, None (a
        Triton server signs nothing; a worker's claims are then kept but not checked)."""
        if self._node_keys is None:
            return None
        return await self._node_keys.node_key(probe_seconds)

    async def model_metadata(self, model: str, probe_seconds: float = 5.0) -> dict[str, Any] | None:
        try:
            answer = await self._service().ModelMetadata(
                pb.ModelMetadataRequest(name=model), timeout=probe_seconds
            )
        except grpc.aio.AioRpcError:
            return None
        if answer is None:
            return None
        metadata = grpc_codec.metadata_from_proto(answer)
        self._plans.learned(model, metadata)
        return metadata

    async def _queue_reading(self, model: str) -> QueueReading | None:
        try:
            answer = await self._service().ModelStatistics(
                pb.ModelStatisticsRequest(name=model), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return None
        if answer is None or not answer.model_stats:
            return None
        inference = answer.model_stats[0].inference_stats
        # proto3 has no absent counter, only an absent message: a server that leaves
        # ``success`` out says nothing of its count (attribution.py then does not wait on it).
        succeeded = int(inference.success.count) if inference.HasField("success") else None
        return QueueReading(int(inference.queue.ns), succeeded)

    def _request(self, model: str, generation: bytes, request_id: str, plan: OutputPlan) -> Any:
        return grpc_codec.request_to_proto(
            model,
            codec.InferRequest(
                inputs=(codec.Tensor(REQUEST_INPUT, "BYTES", (1,), [generation]),),
                id=request_id,
                outputs=tuple(codec.RequestedOutput(n, binary=True) for n in plan.requested),
            ),
        )

    async def infer(
        self, model: str, generation: bytes, request_id: str, run_seconds: float = 600.0
    ) -> BackendResult:
        plan = await self._plans.plan(model)
        request = self._request(model, generation, request_id, plan)
        bracket = await self._attribution.open(model)
        try:
            answer = await self._service().ModelInfer(request, timeout=run_seconds)
        except asyncio.CancelledError:
            bracket.ran()  # Triton counts a cancelled request among its successes (measured)
            raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                bracket.ran()  # as a cancel
            raise _backend_error(exc, self._target) from exc
        bracket.ran()  # answered
        try:
            result = read_result(
                grpc_codec.response_from_proto(_readable(answer)), plan, request_id
            )
        except codec.ProtocolError as exc:
            raise self._broke_protocol(exc) from exc
        return await attributed(result, bracket, self._attribution, model)

    async def generate_stream(
        self, model: str, generation: bytes, request_id: str, run_seconds: float = 600.0
    ) -> AsyncIterator[StreamEvent]:
        """Progress, then the result. Closing the iterator early cancels the RPC."""
        plan = await self._plans.plan(model)
        request = self._request(model, generation, request_id, plan)
        bracket = await self._attribution.open(model)
        call = self._service().ModelStreamInfer(timeout=run_seconds)
        try:
            await call.write(request)
            await call.done_writing()
            async for message in call:
                if _readable(message).error_message:
                    raise _stream_error(message, self._target)
                response = grpc_codec.response_from_proto(message.infer_response)
                if not response.outputs and not _has_progress(response):
                    continue  # Triton's empty final-flag response
                if is_progress(response, plan):
                    bracket.responded()
                    yield to_progress(progress_values(response))
                    continue
                yield await attributed(
                    read_result(response, plan, request_id), bracket, self._attribution, model
                )
                return
        except (GeneratorExit, asyncio.CancelledError):
            bracket.ran()  # closed early: Triton counts the cancelled request a success
            raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                bracket.ran()
            raise _backend_error(exc, self._target) from exc
        except codec.ProtocolError as exc:
            bracket.ran()  # it answered, unreadably
            raise self._broke_protocol(exc) from exc
        finally:
            call.cancel()  # no-op once the RPC ended; otherwise the server hears of it
        raise BackendError("the backend's stream ended without a result", retriable=True)

    def _broke_protocol(self, exc: codec.ProtocolError) -> BackendError:
        """An answer that cannot be read: the model may have run, so it is not sent again."""
        log.warning("backend grpc://%s broke the protocol: %s", self._target, exc)
        return BackendError(
            "the backend's answer could not be read", code="backend_protocol", retriable=False
        )

    async def cancel(self, model: str, request_id: str) -> bool:
        """No cancel message in KServe v2: the dispatcher cancels the call itself."""
        return False


def _readable(message: Any) -> Any:
    """grpcio hands over None for a message its deserializer could not parse (it logs the
    DecodeError and goes on): that is an answer that cannot be read."""
    if message is None:
        raise codec.ProtocolError("a message that is not a valid protobuf")
    return message


def _has_progress(response: codec.InferResponse) -> bool:
    values = progress_values(response)
    return "step" in values or "progress" in values


async def close_all(clients: list[KServeGrpcClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

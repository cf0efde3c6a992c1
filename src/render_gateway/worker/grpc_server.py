"""The worker's KServe v2 gRPC endpoint (``inference.GRPCInferenceService``, as Triton serves it).

A ``grpc.aio`` server on the worker's event loop, beside the HTTP app, on the same state and
the same serving path (``serving``): one run service, one set of checks, one set of counters.
When a client cancels a call (or its deadline passes) grpc cancels the handler's task; the run's
cancel flag is then set exactly as for an HTTP hang-up, so the run stops within a step.
Errors are gRPC statuses whose details are the human message, with Render's code in the
trailing metadata ``render-code``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from render_gateway.kserve import codec, grpc_codec
from render_gateway.worker import grpc_messages as messages
from render_gateway.worker import serving
from render_gateway.worker.errors import ApiError
from render_gateway.worker.pipelines import LoadedModel
from render_gateway.worker.runs import Run, RunFailed, wait_for
from render_gateway.worker.state import MODEL_VERSION, WorkerState, find_model

log = logging.getLogger(__name__)

T = TypeVar("T")

FINAL_RESPONSE = "triton_final_response"


def _version(message: Any) -> str | None:
    """The version asked for (None: the latest): ``model_version`` on infer requests,
    ``version`` on the others."""
    field = "model_version" if hasattr(message, "model_version") else "version"
    return getattr(message, field) or None


async def _abort(context: Any, error: ApiError) -> None:
    await context.abort(
        messages.status_of(error),
        error.message,
        trailing_metadata=((messages.RENDER_CODE_METADATA, error.code),),
    )


async def _answer(context: Any, work: Callable[[], Awaitable[T]]) -> T:
    """Run a handler's work; an ``ApiError`` becomes its gRPC status (abort raises)."""
    try:
        return await work()
    except ApiError as error:
        await _abort(context, error)
        raise AssertionError("context.abort returned") from error
    except codec.ProtocolError as exc:
        await _abort(context, ApiError(400, "invalid_tensor", str(exc)))
        raise AssertionError("context.abort returned") from exc
    except (asyncio.CancelledError, grpc.aio.AbortError):
        raise
    except Exception as exc:
        # As the HTTP app's last handler: the detail goes to the log, INTERNAL to the caller.
        log.exception("unhandled error in a gRPC call")
        await _abort(context, ApiError(500, "internal", f"{type(exc).__name__}: {exc}"))
        raise AssertionError("context.abort returned") from exc


class KServeServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Health, metadata, config, statistics and inference; everything else is UNIMPLEMENTED
    (the base class's answer), as on a Triton without that extension."""

    def __init__(self, state: WorkerState, node_key_id: str) -> None:
        self._state = state
        self._key_id = node_key_id

    # -------------------------------------------------------------------- health, metadata

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self._state.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        # Unknown models are not ready (as tritonclient's HTTP client reads a 404): no error.
        model_state = self._state.models.get(request.name)
        ready = (
            model_state is not None
            and model_state.status == "ready"
            and _version(request) in (None, MODEL_VERSION)
        )
        return service_pb2.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return json_format.ParseDict(
            serving.server_metadata(), service_pb2.ServerMetadataResponse()
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            model = find_model(self._state, request.name, _version(request))
            metadata = serving.model_metadata(model, self._key_id)
            del metadata["parameters"]  # the gRPC message has no place for them
            return json_format.ParseDict(metadata, service_pb2.ModelMetadataResponse())

        return await _answer(context, work)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            model = find_model(self._state, request.name, _version(request))
            config = serving.model_config(model, serving.device_of(self._state), self._key_id)
            return json_format.ParseDict({"config": config}, service_pb2.ModelConfigResponse())

        return await _answer(context, work)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            entries = serving.model_statistics(self._state, request.name or None, _version(request))
            # Render's own counters have no field in Triton's message (HTTP shows them).
            body = {"model_stats": [{k: v for k, v in e.items() if k != "render"} for e in entries]}
            return json_format.ParseDict(body, service_pb2.ModelStatisticsResponse())

        return await _answer(context, work)

    # ------------------------------------------------------------------------- inference

    async def _start(self, request: Any, arrived_ns: int) -> tuple[Run, LoadedModel]:
        model = find_model(self._state, request.model_name, _version(request))
        decoded = grpc_codec.request_from_proto(request)
        gen = serving.generation_from_infer(decoded, model)
        run_id = serving.request_id(decoded.id)
        run = await serving.start_run(self._state, model, gen, run_id, arrived_ns)
        return run, model

    def _response(self, run: Run, model: LoadedModel, outcome: Any) -> Any:
        device = serving.device_of(self._state)
        response = serving.infer_response(outcome, device, run.request_id, model)
        return grpc_codec.response_to_proto(response)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        arrived_ns = time.perf_counter_ns()

        async def work() -> Any:
            run, model = await self._start(request, arrived_ns)
            # Cancelled by the client: outcome_of cancels the run and re-raises.
            outcome = await serving.outcome_of(self._state, run, model, None)
            assert outcome is not None  # no caller_left future: only the run can finish
            return self._response(run, model, outcome)

        return await _answer(context, work)

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        """Each request on the stream runs at once (up to the model's slots); its answers are
        progress responses (no outputs; parameters ``step``, ``steps``, ``progress``,
        ``gpu_seconds``), then one final response with the outputs, or an ``error_message``.
        The last answer of each request carries ``triton_final_response: true``. Closing or
        cancelling the stream cancels every run still going."""
        answers: asyncio.Queue[Any] = asyncio.Queue()
        streams: set[asyncio.Task[None]] = set()

        async def read_requests() -> None:
            async for request in request_iterator:
                task = asyncio.create_task(self._stream_one(request, answers))
                streams.add(task)
                task.add_done_callback(streams.discard)
            while streams:
                await asyncio.wait(set(streams))
            answers.put_nowait(None)

        reader = asyncio.create_task(read_requests())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            await reader  # surfaces an error reading the request stream
        finally:
            reader.cancel()
            for task in list(streams):
                task.cancel()  # each cancels its run (outcome wait or progress wait)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(reader, *streams, return_exceptions=True)

    async def _stream_one(self, request: Any, answers: asyncio.Queue[Any]) -> None:
        """One request of a stream; whatever happens, it ends with one final answer."""
        try:
            await self._stream_run(request, answers)
        except Exception as exc:
            log.exception("unhandled error in a gRPC stream request")
            error = ApiError(500, "internal", f"{type(exc).__name__}: {exc}")
            answers.put_nowait(_stream_error(request, error))

    async def _stream_run(self, request: Any, answers: asyncio.Queue[Any]) -> None:
        arrived_ns = time.perf_counter_ns()
        try:
            run, model = await self._start(request, arrived_ns)
        except ApiError as error:
            answers.put_nowait(_stream_error(request, error))
            return
        except codec.ProtocolError as exc:
            answers.put_nowait(_stream_error(request, ApiError(400, "invalid_tensor", str(exc))))
            return
        try:
            async for progress in serving.progress_of(run):
                message = service_pb2.ModelInferResponse(
                    model_name=model.name, model_version=MODEL_VERSION, id=run.request_id
                )
                fields = serving.progress_fields(run.request_id, progress)
                del fields["id"]
                grpc_codec.set_parameters(message.parameters, {**fields, FINAL_RESPONSE: False})
                answers.put_nowait(service_pb2.ModelStreamInferResponse(infer_response=message))
            try:
                outcome = await wait_for(run)
            except RunFailed as exc:
                answers.put_nowait(
                    _stream_error(request, serving.failed_error(exc), run.request_id)
                )
                return
            if outcome.status == "cancelled":
                cancelled = serving.cancelled_error(outcome, serving.device_of(self._state), model)
                answers.put_nowait(_stream_error(request, cancelled, run.request_id))
                return
            device = serving.device_of(self._state)
            response = serving.infer_response(outcome, device, run.request_id, model)
            final = grpc_codec.response_to_proto(response, {FINAL_RESPONSE: True})
            answers.put_nowait(service_pb2.ModelStreamInferResponse(infer_response=final))
        finally:
            serving.abandon(run)  # the stream went away before the run ended


def _stream_error(request: Any, error: ApiError, run_id: str | None = None) -> Any:
    """A failed request on a stream: Triton's ``error_message`` (the human message), and a
    final response naming the request with Render's code (and a cancelled run's parameters)."""
    message = service_pb2.ModelInferResponse(
        model_name=request.model_name,
        model_version=request.model_version or MODEL_VERSION,
        id=run_id or request.id,
    )
    parameters: dict[str, codec.Scalar] = {"render_code": error.code, FINAL_RESPONSE: True}
    extra = error.extra.get("parameters")
    if isinstance(extra, dict):
        parameters = {**extra, **parameters}
    grpc_codec.set_parameters(message.parameters, parameters)
    return service_pb2.ModelStreamInferResponse(error_message=error.message, infer_response=message)


async def start_grpc_server(
    state: WorkerState, node_key_id: str, host: str, port: int
) -> tuple[Any, int]:
    """Start the endpoint on ``host:port`` (0: a free port); returns the server and its port."""
    limit = state.config.max_request_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        KServeServicer(state, node_key_id), server
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the gRPC endpoint to {host}:{port}")
    await server.start()
    log.info("KServe v2 gRPC endpoint on %s:%d", host, bound)
    return server, bound

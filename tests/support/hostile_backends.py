"""Misbehaving KServe v2 backends on 127.0.0.1 (an OS-chosen port each), for tests of the
gateway's clients: each route answers whatever the test sets, so a test can play a backend
that lies in its metadata, breaks the binary framing, or streams garbage."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from aiohttp import web
from tritonclient.grpc import service_pb2_grpc

from render_gateway.kserve import codec

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bytes_output(
    name: str, elements: Sequence[bytes], shape: Sequence[int] | None = None
) -> dict[str, Any]:
    """A BYTES output in binary form: its header entry and raw data."""
    raw = codec.pack_bytes_elements(elements)
    return {
        "name": name,
        "datatype": "BYTES",
        "shape": list(shape if shape is not None else [len(elements)]),
        "parameters": {"binary_data_size": len(raw)},
        "_raw": raw,
    }


def raw_output(name: str, datatype: str, raw: bytes, shape: Sequence[int]) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(shape),
        "parameters": {"binary_data_size": len(raw)},
        "_raw": raw,
    }


def fp64(name: str, value: float) -> dict[str, Any]:
    return raw_output(name, "FP64", struct.pack("<d", value), [1])


def infer_answer(outputs: Sequence[dict[str, Any]], **header: Any) -> web.Response:
    """A binary-extension infer response of these outputs (``_raw`` is each one's data)."""
    blobs = [o.get("_raw", b"") for o in outputs]
    entries = [{k: v for k, v in o.items() if k != "_raw"} for o in outputs]
    head = orjson.dumps({"model_name": "demo", "outputs": entries, **header})
    return web.Response(
        body=head + b"".join(blobs),
        headers={codec.HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"},
    )


async def sse(request: web.Request, chunks: Sequence[bytes]) -> web.StreamResponse:
    """A text/event-stream answer of these raw chunks, in order, then the end."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


@dataclass
class HostileHttpBackend:
    """Routes the test fills in: ``metadata`` (the model metadata JSON; None: 404), ``stats``
    (the statistics JSON, or a function giving it per request; None: 404), ``infer`` and
    ``stream`` handlers. ``hits`` counts the requests per route."""

    url: str = ""
    metadata: Any = None
    stats: Any = None
    infer: Handler | None = None
    stream: Handler | None = None
    hits: dict[str, int] = field(default_factory=dict)
    never: asyncio.Event = field(default_factory=asyncio.Event)  # set at teardown

    def app(self) -> web.Application:
        async def _json(body: Any, route: str) -> web.Response:
            self.hits[route] = self.hits.get(route, 0) + 1
            if callable(body):  # a fresh answer per request (a counter, say)
                body = body()
            if body is None:
                return web.Response(status=404, text='{"error": "no such thing"}')
            return web.Response(body=body if isinstance(body, bytes) else orjson.dumps(body))

        async def metadata(_request: web.Request) -> web.Response:
            return await _json(self.metadata, "metadata")

        async def stats(_request: web.Request) -> web.Response:
            return await _json(self.stats, "stats")

        async def infer(request: web.Request) -> web.StreamResponse:
            self.hits["infer"] = self.hits.get("infer", 0) + 1
            assert self.infer is not None, "the test set no infer answer"
            return await self.infer(request)

        async def stream(request: web.Request) -> web.StreamResponse:
            self.hits["stream"] = self.hits.get("stream", 0) + 1
            assert self.stream is not None, "the test set no stream answer"
            return await self.stream(request)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v2/models/{model}", metadata)
        app.router.add_get("/v2/models/{model}/stats", stats)
        app.router.add_post("/v2/models/{model}/infer", infer)
        app.router.add_post("/v2/models/{model}/generate_stream", stream)
        return app


@asynccontextmanager
async def hostile_http_backend() -> AsyncIterator[HostileHttpBackend]:
    backend = HostileHttpBackend()
    runner = web.AppRunner(backend.app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    backend.url = f"http://127.0.0.1:{port}"
    try:
        yield backend
    finally:
        backend.never.set()
        await runner.cleanup()


# ------------------------------------------------------------------------------------- gRPC

GrpcAnswer = Callable[[Any, Any], Awaitable[Any]]


class HostileServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """KServe v2 over gRPC answering what the test sets: ``infer`` (request, context) → a
    ``ModelInferResponse``; ``stream`` (request, context) → an async iterator of
    ``ModelStreamInferResponse``. Metadata and statistics answer ``metadata``/``stats`` when
    set, else UNIMPLEMENTED (grpcio's default), as a server without them does."""

    def __init__(self) -> None:
        self.infer: GrpcAnswer | None = None
        self.stream: Callable[[Any, Any], AsyncIterator[Any]] | None = None
        self.metadata: Any = None
        self.stats: Any = None
        self.hits: dict[str, int] = {}
        self.never = asyncio.Event()

    def _hit(self, route: str) -> None:
        self.hits[route] = self.hits.get(route, 0) + 1

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self._hit("infer")
        assert self.infer is not None, "the test set no infer answer"
        return await self.infer(request, context)

    async def ModelStreamInfer(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        self._hit("stream")
        assert self.stream is not None, "the test set no stream answer"
        async for request in requests:
            async for answer in self.stream(request, context):
                yield answer

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        self._hit("metadata")
        if self.metadata is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no metadata here")
        return self.metadata

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        self._hit("stats")
        if self.stats is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no statistics here")
        return self.stats() if callable(self.stats) else self.stats


@dataclass
class HostileGrpcBackend:
    endpoint: str  # grpc://127.0.0.1:port
    servicer: HostileServicer


@asynccontextmanager
async def hostile_grpc_backend(
    raw_infer: Callable[[bytes, Any], Awaitable[bytes]] | None = None,
    raw_stream: Callable[[AsyncIterator[bytes], Any], AsyncIterator[bytes]] | None = None,
) -> AsyncIterator[HostileGrpcBackend]:
    """A gRPC server on an OS-chosen port. ``raw_infer`` answers ModelInfer (``raw_stream``
    ModelStreamInfer) with the bytes it returns, unparsed (messages no protobuf library would
    write); the server then has no other method."""
    server = grpc.aio.server(
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
    )
    servicer = HostileServicer()
    if raw_infer is not None or raw_stream is not None:
        unparsed = {"request_deserializer": bytes, "response_serializer": bytes}
        handlers = {}
        if raw_infer is not None:
            handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(raw_infer, **unparsed)
        if raw_stream is not None:
            handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
                raw_stream, **unparsed
            )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),)
        )
    else:  # (registered methods would take precedence over the generic handler)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield HostileGrpcBackend(f"grpc://127.0.0.1:{port}", servicer)
    finally:
        servicer.never.set()
        await server.stop(grace=None)

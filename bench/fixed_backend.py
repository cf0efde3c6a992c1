"""A fixed-response KServe v2 backend for gateway benchmarks: no model, the same answer always.

HTTP routes: ``GET /v2/health/ready`` (200), ``GET /v2/models/{m}`` (model metadata: output
``images`` BYTES, as KServe v2 requires of every backend; ``--no-http-metadata`` answers 404 there,
as this backend did before the gateway read metadata), ``POST /v2/models/{m}/infer`` (binary
tensor extension: a ~1 KB PNG-looking BYTES output ``images``,
``Inference-Header-Content-Length``), ``POST /v2/models/{m}/generate_stream`` (SSE: one
``event: result`` whose data is the KServe JSON response, output in base64), and ``GET /stats``
(requests per route and transport and distinct client connections seen, for the benchmark's
report). Bodies are precomputed with the project's codec, so they are exactly what a real backend
would send.

With ``--grpc-port``, the same process also serves KServe v2 over gRPC (``grpc.aio``,
tritonclient's service stubs, messages through ``render_gateway.kserve.grpc_codec``):
ServerLive/ServerReady, ModelReady, ModelMetadata, ModelStatistics (zero counters) and ModelInfer
with the same PNG and the same response parameters (``gpu_seconds`` included, so the gateway
never needs the statistics to bill).

    python bench/fixed_backend.py --port 9000 [--grpc-port 9001]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
from typing import Any

import grpc
import orjson
from aiohttp import web
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from render_gateway.kserve import codec, grpc_codec

PARAMETERS: dict[str, codec.Scalar] = {"gpu_seconds": 0.0, "seed": 1, "content_type": "image/png"}


def fake_png(size: int = 1024) -> bytes:
    """A PNG signature and an IHDR-looking chunk, then deterministic filler: ~1 KB."""
    head = (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x40\x00\x00\x00\x40\x08\x02\x00\x00\x00"
    )
    return head + random.Random(1).randbytes(size - len(head))


def fixed_response(model: str, image: bytes) -> codec.InferResponse:
    return codec.InferResponse(
        model_name=model,
        outputs=(codec.Tensor("images", "BYTES", (1,), [image], {"content_type": "image/png"}),),
        parameters=PARAMETERS,
    )


def metadata(model: str) -> dict[str, Any]:
    """KServe v2 model metadata: the ``request`` input the gateway sends, ``images`` out."""
    return {
        "name": model,
        "versions": ["1"],
        "platform": "fixed",
        "inputs": [{"name": "request", "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": "images", "datatype": "BYTES", "shape": [1]}],
    }


def bodies(model: str, image: bytes) -> tuple[bytes, int, bytes]:
    """The infer body and its header length, and the SSE result event, for ``model``."""
    binary = fixed_response(model, image)
    infer_body, header_length = codec.encode_response(binary, frozenset({"images"}))
    assert header_length is not None
    as_json = codec.InferResponse(
        model_name=model,
        outputs=(
            codec.Tensor(
                "images",
                "BYTES",
                (1,),
                [image],
                {"content_type": "image/png", "content_encoding": "base64"},
            ),
        ),
        parameters=PARAMETERS,
    )
    event = orjson.dumps(codec.response_json(as_json, frozenset(), []))
    return infer_body, header_length, b"event: result\ndata: " + event + b"\n\n"


class Stats:
    """What the backend saw, for ``GET /stats``: answers per route, and client connections."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.peers: set[object] = set()

    def saw(self, route: str, peer: object) -> None:
        self.counts[route] = self.counts.get(route, 0) + 1
        self.peers.add(peer)

    def as_json(self) -> dict[str, int]:
        infers = sum(v for k, v in self.counts.items() if k.endswith(("infer", "stream")))
        return {"requests": infers, "connections": len(self.peers), **self.counts}


def make_app(stats: Stats, http_metadata: bool = True) -> web.Application:
    image = fake_png()
    cache: dict[str, tuple[bytes, int, bytes]] = {}

    def peer_of(request: web.Request) -> object:
        return request.transport.get_extra_info("peername") if request.transport else None

    def for_model(request: web.Request, route: str) -> tuple[bytes, int, bytes]:
        stats.saw(route, peer_of(request))
        model = request.match_info["model"]
        if model not in cache:
            cache[model] = bodies(model, image)
        return cache[model]

    async def ready(_request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def model_metadata(request: web.Request) -> web.Response:
        stats.saw("http_metadata", peer_of(request))
        if not http_metadata:
            return web.json_response({"error": "no metadata here"}, status=404)
        return web.json_response(metadata(request.match_info["model"]))

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        body, header_length, _ = for_model(request, "http_infer")
        return web.Response(
            body=body,
            content_type=codec.BINARY_CONTENT_TYPE,
            headers={codec.HEADER_LENGTH: str(header_length)},
        )

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        _, _, event = for_model(request, "http_stream")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(event)
        await response.write_eof()
        return response

    async def show_stats(_request: web.Request) -> web.Response:
        return web.json_response(stats.as_json())

    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/{model}", model_metadata)
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_post("/v2/models/{model}/generate_stream", generate_stream)
    app.router.add_get("/stats", show_stats)
    return app


class FixedServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """KServe v2 over gRPC with the same fixed answer; other RPCs are UNIMPLEMENTED."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._image = fake_png()
        self._answers: dict[str, Any] = {}

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        self._stats.saw("grpc_metadata", context.peer())
        described = metadata(request.name)
        return pb.ModelMetadataResponse(
            name=described["name"],
            versions=described["versions"],
            platform=described["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in described["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in described["outputs"]],
        )

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        self._stats.saw("grpc_statistics", context.peer())
        entry = pb.ModelStatistics(name=request.name, version="1")
        return pb.ModelStatisticsResponse(model_stats=[entry])

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        # Decoded as a real server would; the answer is built once, like the HTTP body (and,
        # like it, does not echo the request's id: the gateway does not need it back).
        grpc_codec.request_from_proto(request)
        self._stats.saw("grpc_infer", context.peer())
        model = request.model_name
        answer = self._answers.get(model)
        if answer is None:
            answer = self._answers[model] = grpc_codec.response_to_proto(
                fixed_response(model, self._image)
            )
        return answer


async def serve(host: str, port: int, grpc_port: int | None, http_metadata: bool) -> None:
    """Until SIGTERM or SIGINT. gRPC starts first, so HTTP ready means both are listening."""
    stats = Stats()
    server: grpc.aio.Server | None = None
    if grpc_port is not None:
        server = grpc.aio.server(options=[("grpc.max_send_message_length", -1)])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(FixedServicer(stats), server)
        if server.add_insecure_port(f"{host}:{grpc_port}") == 0:
            raise SystemExit(f"cannot listen on {host}:{grpc_port} for gRPC")
        await server.start()
    runner = web.AppRunner(make_app(stats, http_metadata), access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if server is not None:
            await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, help="also serve KServe v2 gRPC on this port")
    parser.add_argument(
        "--no-http-metadata",
        action="store_true",
        help="answer 404 to GET /v2/models/{m} (this backend before the gateway read metadata)",
    )
    args = parser.parse_args()
    loop = new_loop()
    try:
        loop.run_until_complete(
            serve(args.host, args.port, args.grpc_port, not args.no_http_metadata)
        )
    finally:
        loop.close()


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the gateway runs on it too), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    main()

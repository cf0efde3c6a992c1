"""A fixed-response KServe v2 backend for gateway benchmarks: no model, the same answer always.

Routes: ``GET /v2/health/ready`` (200), ``POST /v2/models/{m}/infer`` (binary tensor extension:
a ~1 KB PNG-looking BYTES output ``images``, ``Inference-Header-Content-Length``),
``POST /v2/models/{m}/generate_stream`` (SSE: one ``event: result`` whose data is the KServe JSON
response, output in base64), and ``GET /stats`` (requests and distinct client connections seen,
for the benchmark's report). Bodies are precomputed with the project's codec, so they are exactly
what a real backend would send.

    python bench/fixed_backend.py --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import random
from typing import Any

import orjson
from aiohttp import web

from render_gateway.kserve import codec

PARAMETERS: dict[str, codec.Scalar] = {"gpu_seconds": 0.0, "seed": 1, "content_type": "image/png"}


def fake_png(size: int = 1024) -> bytes:
    """A PNG signature and an IHDR-looking chunk, then deterministic filler: ~1 KB."""
    head = (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x40\x00\x00\x00\x40\x08\x02\x00\x00\x00"
    )
    return head + random.Random(1).randbytes(size - len(head))


def bodies(model: str, image: bytes) -> tuple[bytes, int, bytes]:
    """The infer body and its header length, and the SSE result event, for ``model``."""
    binary = codec.InferResponse(
        model_name=model,
        outputs=(codec.Tensor("images", "BYTES", (1,), [image], {"content_type": "image/png"}),),
        parameters=PARAMETERS,
    )
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


def make_app() -> web.Application:
    image = fake_png()
    cache: dict[str, tuple[bytes, int, bytes]] = {}
    stats: dict[str, Any] = {"requests": 0, "peers": set()}

    def for_model(request: web.Request) -> tuple[bytes, int, bytes]:
        stats["requests"] += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        stats["peers"].add(peer)
        model = request.match_info["model"]
        if model not in cache:
            cache[model] = bodies(model, image)
        return cache[model]

    async def ready(_request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        body, header_length, _ = for_model(request)
        return web.Response(
            body=body,
            content_type=codec.BINARY_CONTENT_TYPE,
            headers={codec.HEADER_LENGTH: str(header_length)},
        )

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        _, _, event = for_model(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(event)
        await response.write_eof()
        return response

    async def show_stats(_request: web.Request) -> web.Response:
        return web.json_response(
            {"requests": stats["requests"], "connections": len(stats["peers"])}
        )

    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_post("/v2/models/{model}/generate_stream", generate_stream)
    app.router.add_get("/stats", show_stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None,
                shutdown_timeout=1, loop=new_loop())  # fmt: skip


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the gateway runs on it too), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    main()

"""A backend process that is up but fails every inference, as a crashing model server would.
Run by tests: ``python failing_backend.py PORT``.

Model ``triton`` fails the way Triton does when a Python model raises: HTTP 500 whose
``error`` is the whole message, traceback and server paths included. Model ``triton-refusal``
answers 400 the same way. Any other model answers 500 ``{"error": "internal", ...}``.
"""

from __future__ import annotations

import sys

from aiohttp import web

TRITON_TRACEBACK = (
    "in ensemble 'render', Failed to process the request(s) for model instance "
    "'render_0_0', message: Traceback (most recent call last):\n"
    '  File "/srv/triton/models/render/1/model.py", line 88, in execute\n'
    "    image = self.pipeline(**request)\n"
    "RuntimeError: CUDA out of memory (secret-marker-7f3a)"
)
TRITON_REFUSAL = "unexpected inference input 'request' for model at /srv/triton/models/render"


async def ready(_: web.Request) -> web.Response:
    return web.json_response({"ready": True})


async def fail(request: web.Request) -> web.Response:
    model = request.match_info["m"]
    if model == "triton":
        return web.json_response({"error": TRITON_TRACEBACK}, status=500)
    if model == "triton-refusal":
        return web.json_response({"error": TRITON_REFUSAL}, status=400)
    return web.json_response({"error": "internal", "message": "boom"}, status=500)


def main(port: int) -> None:
    app = web.Application()
    app.add_routes([web.get("/v2/health/ready", ready), web.post("/v2/models/{m}/{op}", fail)])
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))

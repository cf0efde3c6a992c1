"""A backend process that is up but fails every inference with a 500, as a crashing model
server would. Run by tests: ``python failing_backend.py PORT``."""

from __future__ import annotations

import sys

from aiohttp import web


async def ready(_: web.Request) -> web.Response:
    return web.json_response({"ready": True})


async def fail(_: web.Request) -> web.Response:
    return web.json_response({"error": "internal", "message": "boom"}, status=500)


def main(port: int) -> None:
    app = web.Application()
    app.add_routes([web.get("/v2/health/ready", ready), web.post("/v2/models/{m}/{op}", fail)])
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))

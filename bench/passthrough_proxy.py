"""The floor for a gateway's per-request cost: a bare pass-through proxy (aiohttp server and
aiohttp client, on uvloop like the gateway). ``POST /{modality}/{family}/{model}/...`` forwards
the body to ``{backend}/v2/models/{model}/infer`` and answers with the backend's bytes. No auth,
validation, routing, storage or retries: what any proxy in Python must pay at least.

    python bench/passthrough_proxy.py --port 9100 --backend http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

from fixed_backend import new_loop

SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_app(backend: str) -> web.Application:
    app = web.Application()

    async def start(app: web.Application) -> None:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stop(app: web.Application) -> None:
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.Response:
        parts = request.path.split("/")
        model = parts[3] if len(parts) > 3 else "tiny"
        body = await request.read()
        async with app[SESSION].post(f"{backend}/v2/models/{model}/infer", data=body) as reply:
            payload = await reply.read()
            return web.Response(body=payload, status=reply.status, content_type=reply.content_type)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.backend.rstrip("/")), host=args.host, port=args.port, print=None,
                access_log=None, shutdown_timeout=1, loop=new_loop())  # fmt: skip


if __name__ == "__main__":
    main()

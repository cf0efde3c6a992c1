"""The framework floor: what FastAPI on uvicorn (httptools, uvloop; the gateway's stack, same
versions, FastAPI's native telemetry off as in the gateway) costs for the gateway's three hot
HTTP shapes with none of its work. Beside the bare aiohttp proxy (``passthrough_proxy.py``), it
says how much of the gateway's cost is the framework the project chose and how much is its own.

* ``POST /image/{family}/{model}/t2i``: a pydantic body, a bearer header read through a
  dependency, the body forwarded with aiohttp to ``{backend}/v2/models/{model}/infer``, the
  backend's bytes answered;
* ``POST /queue``: a pydantic body and the bearer dependency; an id and a position kept in a
  dict (no storage, no durability), answered 202 as JSON;
* ``GET /jobs/{id}``: the bearer dependency and a dict lookup, answered as JSON.

No auth check, rate limit, budget, durable write, billing or retries: nothing a gateway with
billing can skip. ``python bench/fastapi_floor.py --port 9200 --backend http://127.0.0.1:9000``
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import aiohttp
import orjson
import uvicorn
import uvloop
from fastapi import Depends, FastAPI, Header, HTTPException, Response
from pydantic import BaseModel


class Generation(BaseModel):
    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None


class Submission(Generation):
    modality: str
    family: str
    model: str
    task: str


def bearer(authorization: Annotated[str | None, Header()] = None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(401)
    return authorization[7:]


def make_app(backend: str) -> FastAPI:
    session: list[aiohttp.ClientSession] = []
    jobs: dict[str, int] = {}
    numbers = itertools.count()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        yield
        await session[0].close()

    off = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    has_telemetry = "telemetry" in inspect.signature(FastAPI.__init__).parameters
    app = FastAPI(lifespan=lifespan, **({"telemetry": off} if has_telemetry else {}))

    @app.post("/image/{family}/{model}/t2i")
    async def run_now(
        family: str, model: str, body: Generation, _token: Annotated[str, Depends(bearer)]
    ) -> Response:
        payload = orjson.dumps(body.model_dump(exclude_none=True))
        async with session[0].post(f"{backend}/v2/models/{model}/infer", data=payload) as reply:
            data = await reply.read()
            return Response(data, status_code=reply.status, media_type=reply.content_type)

    @app.post("/queue", status_code=202)
    async def submit(body: Submission, _token: Annotated[str, Depends(bearer)]) -> Response:
        job_id = f"j_{next(numbers):017d}"
        jobs[job_id] = position = len(jobs)
        answer = {"id": job_id, "status": "queued", "position": position, "model": body.model}
        return Response(orjson.dumps(answer), status_code=202, media_type="application/json")

    @app.get("/jobs/{job_id}")
    async def job(job_id: str, _token: Annotated[str, Depends(bearer)]) -> Response:
        if job_id not in jobs:
            raise HTTPException(404)
        answer = {"id": job_id, "status": "queued", "position": jobs[job_id]}
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    args = parser.parse_args()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    config = uvicorn.Config(
        make_app(args.backend.rstrip("/")), http="httptools", log_level="warning",
        access_log=False, lifespan="on",
    )  # fmt: skip
    uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    main()

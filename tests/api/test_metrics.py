"""The request-latency histogram's middleware on a real Starlette app: one series per method,
route template and status, each counting its own requests (its children are remembered)."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from render_gateway.api.metrics import LatencyMiddleware


async def item(request: Request) -> PlainTextResponse:
    return PlainTextResponse("", status_code=int(request.query_params.get("status", "200")))


async def test_each_method_route_and_status_counts_its_own_requests() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("t_seconds", "t", ["method", "route", "status"], registry=registry)
    app = Starlette(routes=[Route("/items/{id}", item, methods=["GET", "POST"])])
    app.add_middleware(LatencyMiddleware, histogram=histogram)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path in ("/items/1", "/items/2", "/items/3?status=404"):
            await client.get(path)
        await client.post("/items/1")
        await client.get("/nowhere")

    def count(method: str, route: str, status: str) -> float | None:
        labels = {"method": method, "route": route, "status": status}
        return registry.get_sample_value("t_seconds_count", labels)

    assert count("GET", "/items/{id}", "200") == 2  # two paths, one template
    assert count("GET", "/items/{id}", "404") == 1
    assert count("POST", "/items/{id}", "200") == 1
    assert count("GET", "unmatched", "404") == 1

"""The lean handler of the hot routes (api/lean_route.py) answers what FastAPI's own handler
answers: the same gateway, the same requests — generated, hostile ones included — once with
``app.state.lean_routes`` on and once off, compared status, headers and body (ids, positions
and rate counters masked: each request makes its own). In process, real stores, no backend
running (a valid sync request meets a backend that is not there, the same way both times)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from render_gateway.api.app import create_app
from render_gateway.api.lean_route import LEAN_ATTRIBUTE, LeanRoute, lean, lean_handler
from render_gateway.application.services import GatewayServices
from render_gateway.config import (
    BackendConfig,
    CatalogEntryConfig,
    GatewayConfig,
    PlanConfig,
    ReconcileConfig,
)
from render_gateway.generation import TASK_MODALITY

from support.memory_stores import memory_stores
from support.processes import free_port

LEAN_PATHS = {
    ("POST", "/queue"),
    ("GET", "/jobs/{job_id}"),
    ("DELETE", "/jobs/{job_id}"),
    ("POST", "/v1/images/generations"),
} | {
    ("POST", f"/{modality}/{{family}}/{{model}}/{task}") for task, modality in TASK_MODALITY.items()
}


class Gateway:
    def __init__(self, runner: asyncio.Runner, services: GatewayServices, keys: dict[str, str]):
        self.runner, self.services, self.keys = runner, services, keys
        self.app = create_app(services.config, started=services)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://gateway"
        )

    def send(self, lean_on: bool, request: dict[str, Any]) -> httpx.Response:
        self.app.state.lean_routes = lean_on
        return self.runner.run(self.client.request(**request))

    def both(self, request: dict[str, Any]) -> tuple[httpx.Response, httpx.Response]:
        return self.send(True, request), self.send(False, request)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data = tmp_path_factory.mktemp("lean")
    config = GatewayConfig(
        data_dir=data,
        local_demo_worker=False,
        roles=["api"],  # nothing runs a queued job: the answers stay comparable
        backends=[
            BackendConfig(
                id="gone",
                endpoint=f"http://127.0.0.1:{free_port()}",
                family="sd",
                models={"tiny": "demo"},
            )
        ],
        models=[
            CatalogEntryConfig(modality="image", family="sd", model="tiny", tasks=["t2i", "i2i"])
        ],
        plans={"default": PlanConfig(rate_capacity=1e9, rate_refill_per_second=1e9)},
        reconcile=ReconcileConfig(enabled=False),
        stores=memory_stores(),
    )
    with asyncio.Runner() as runner:
        services = runner.run(GatewayServices.start(config))
        keys = {}
        for customer in ("alice", "bob"):
            _, secret = runner.run(services.stores.keys.create(customer, "default"))
            keys[customer] = secret
        gateway = Gateway(runner, services, keys)
        try:
            yield gateway
        finally:
            runner.run(gateway.client.aclose())
            runner.run(services.stop())


MASKED_KEYS = {"id", "request_id", "events_url", "position", "eta_seconds", "created_at"}
COUNTERS = re.compile(r"^(ratelimit-|x-ratelimit-|retry-after)")
ID_PATTERN = re.compile(r"(j|req|r)_[0-9A-Za-z]{10,}")


def masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "<masked>" if k in MASKED_KEYS else masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, str):
        return ID_PATTERN.sub("<id>", value)
    return value


def comparable(response: httpx.Response) -> tuple[Any, ...]:
    headers = {
        k: ("<n>" if COUNTERS.match(k) else ID_PATTERN.sub("<id>", v))
        for k, v in response.headers.items()
        if k not in ("x-request-id", "date", "content-length", "x-duration-ms")
    }
    try:
        body: Any = masked(response.json())
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = response.content
    return response.status_code, headers, body


def assert_same(gateway: Gateway, request: dict[str, Any]) -> httpx.Response:
    lean_answer, standard = gateway.both(request)
    assert comparable(lean_answer) == comparable(standard), request
    assert lean_answer.status_code != 500, (request, lean_answer.text)  # 503: no backend
    return lean_answer


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, through included routers (FastAPI keeps them as branches)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:
            yield from api_routes(router.routes)


def test_every_hot_route_is_served_lean_and_nothing_else_is(gateway: Gateway) -> None:
    marked = {
        (method, route.path)
        for route in api_routes(gateway.app.routes)
        if getattr(route.endpoint, LEAN_ATTRIBUTE, False)
        for method in route.methods
    }
    assert marked == LEAN_PATHS


def test_the_lean_handler_is_the_one_answering_and_fastapi_s_is_not(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fastapi.routing

    solved: list[str] = []
    original = fastapi.routing.solve_dependencies

    async def counting(**kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await original(**kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    alice = {"Authorization": f"Bearer {gateway.keys['alice']}"}
    requests = [
        {"method": "POST", "url": "/queue", "json": VALID_QUEUE, "headers": alice},
        {"method": "GET", "url": "/jobs/j_0000000000000000000", "headers": alice},
        {"method": "POST", "url": "/image/sd/tiny/t2i", "json": VALID_SYNC, "headers": alice},
    ]
    for request in requests:
        gateway.send(True, request)
    assert solved == []
    gateway.send(True, {"method": "GET", "url": "/me", "headers": alice})  # not a lean route
    for request in requests:
        gateway.send(False, request)
    assert solved == ["/me", "/queue", "/jobs/j_0000000000000000000", "/image/sd/tiny/t2i"]


def test_a_shape_the_lean_handler_cannot_serve_exactly_is_refused_when_built() -> None:
    from fastapi import APIRouter, Cookie, Depends

    def other_dependency() -> int:
        return 1

    router = APIRouter(route_class=LeanRoute)
    with pytest.raises(TypeError, match="no lean solver"):

        @router.get("/a")
        @lean
        async def with_dependency(n: int = Depends(other_dependency)) -> None: ...

    with pytest.raises(TypeError, match="cookies"):

        @router.get("/b")
        @lean
        async def with_cookie(session: str | None = Cookie(None)) -> None: ...

    assert callable(lean_handler)


VALID_QUEUE = {
    "modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": "a fox"
}  # fmt: skip
VALID_SYNC = {"prompt": "a lighthouse", "steps": 2}
VALID_OPENAI = {"model": "sd/tiny", "prompt": "a lighthouse", "size": "64x64"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELD_NAMES = ["prompt", "steps", "seed", "width", "height", "format", "priority", "ttl", "task",
               "model", "family", "modality", "webhook", "idempotency_key", "negative_prompt",
               "start_deadline", "backend", "image", "guidance_scale", "extra", "n", "size",
               "response_format", "quality", "stream", "background"]  # fmt: skip


@st.composite
def bodies(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    kind = draw(st.sampled_from(["valid", "changed", "dropped", "any", "bytes", "empty"]))
    if kind == "valid":
        return json.dumps(valid).encode()
    if kind == "changed":
        changed = dict(valid)
        changed[draw(st.sampled_from(FIELD_NAMES))] = draw(json_values)
        return json.dumps(changed).encode()
    if kind == "dropped":
        dropped = dict(valid)
        dropped.pop(draw(st.sampled_from(sorted(valid))))
        return json.dumps(dropped).encode()
    if kind == "any":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=24))
    return b""


CONTENT_TYPES = st.sampled_from(
    [None, "application/json", "application/json; charset=utf-8", "application/merge+json",
     "text/plain", "application/x-www-form-urlencoded", "APPLICATION/JSON"]
)  # fmt: skip
PREFERS = st.sampled_from([None, "respond-async", "wait=0", "respond-async, wait=0", "nonsense"])


@st.composite
def auths(draw: st.DrawFn, gateway: Gateway) -> dict[str, str]:
    choice = draw(st.sampled_from(["alice", "bob", "none", "garbage", "jwt", "scheme"]))
    if choice in gateway.keys:
        return {"Authorization": f"Bearer {gateway.keys[choice]}"}
    return {
        "none": {},
        "garbage": {"Authorization": "Bearer rk_nottherightkey"},
        "jwt": {"Authorization": "Bearer a.b.c"},
        "scheme": {"Authorization": "Basic Zm9vOmJhcg=="},
    }[choice]


@st.composite
def hot_requests(draw: st.DrawFn, gateway: Gateway) -> dict[str, Any]:
    headers = draw(auths(gateway))
    route = draw(st.sampled_from(["queue", "sync", "get", "delete", "openai"]))
    if route in ("get", "delete"):
        job_id = draw(st.sampled_from(["j_0000000000000000000", "x", "j_" + "a" * 40, "%00"]))
        method = "GET" if route == "get" else "DELETE"
        return {"method": method, "url": f"/jobs/{job_id}", "headers": headers}
    content_type = draw(CONTENT_TYPES)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if (prefer := draw(PREFERS)) is not None:
        headers["Prefer"] = prefer
    params: dict[str, str] = {}
    if draw(st.booleans()):
        params["format"] = draw(st.sampled_from(["png", "jpeg", "webp", "bogus", "x" * 40, ""]))
    if draw(st.booleans()):
        params["backend"] = draw(st.sampled_from(["gone", "other", "b" * 65, ""]))
    if route == "queue":
        if draw(st.booleans()):
            headers["Cancel-After"] = draw(st.sampled_from(["90", "5m", "soon", "1" * 40, ""]))
        body = draw(bodies(VALID_QUEUE))
        return {"method": "POST", "url": "/queue", "headers": headers, "content": body,
                "params": params}  # fmt: skip
    if route == "openai":
        body = draw(bodies(VALID_OPENAI))
        return {"method": "POST", "url": "/v1/images/generations", "headers": headers,
                "content": body, "params": params}  # fmt: skip
    task = draw(st.sampled_from(["t2i", "i2i"]))
    model = draw(st.sampled_from(["tiny", "unknown"]))
    body = draw(bodies(VALID_SYNC))
    return {"method": "POST", "url": f"/image/sd/{model}/{task}", "headers": headers,
            "content": body, "params": params}  # fmt: skip


def test_generated_requests_get_the_same_answer_from_both_handlers(gateway: Gateway) -> None:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        seen.add(assert_same(gateway, data.draw(hot_requests(gateway))).status_code)

    seen: set[int] = set()
    check()
    # The requests reached every kind of answer, not only the first refusal on the way.
    assert {400, 401, 404} <= seen, seen


def test_valid_hot_requests_get_the_same_answer_from_both_handlers(gateway: Gateway) -> None:
    alice = {"Authorization": f"Bearer {gateway.keys['alice']}"}
    answers = [
        assert_same(gateway, request).status_code
        for request in (
            {"method": "POST", "url": "/queue", "json": VALID_QUEUE, "headers": alice},
            {"method": "POST", "url": "/queue", "json": VALID_QUEUE,
             "headers": {**alice, "Prefer": "wait=0", "Cancel-After": "5m"}},
            {"method": "POST", "url": "/queue", "json": {**VALID_QUEUE, "priority": "high"},
             "headers": alice, "params": {"ignored": "1"}},
            {"method": "POST", "url": "/image/sd/tiny/t2i", "json": VALID_SYNC, "headers": alice},
            {"method": "POST", "url": "/image/sd/tiny/t2i", "json": VALID_SYNC, "headers": alice,
             "params": {"backend": "gone"}},
            {"method": "POST", "url": "/image/sd/tiny/t2i", "json": VALID_SYNC, "headers": alice,
             "params": {"format": "png"}},  # not one this model offers
            {"method": "POST", "url": "/image/sd/tiny/t2i", "json": VALID_SYNC,
             "headers": {**alice, "Prefer": "respond-async"}},
            {"method": "POST", "url": "/v1/images/generations", "json": VALID_OPENAI,
             "headers": alice},
        )
    ]  # fmt: skip
    # 403: a priority not in the plan; 404: a backend a customer may not pin
    assert answers == [202, 202, 403, 503, 404, 400, 202, 503]


def test_a_job_read_and_cancelled_answers_the_same_both_ways(gateway: Gateway) -> None:
    alice = {"Authorization": f"Bearer {gateway.keys['alice']}"}
    bob = {"Authorization": f"Bearer {gateway.keys['bob']}"}
    for lean_on in (True, False):
        queued = gateway.send(lean_on, {"method": "POST", "url": "/queue", "json": VALID_QUEUE,
                                        "headers": alice})  # fmt: skip
        assert queued.status_code == 202, queued.text
        job = f"/jobs/{queued.json()['id']}"
        for request in (
            {"method": "GET", "url": job, "headers": alice},
            {"method": "GET", "url": job, "headers": bob},  # another's job: 404 both ways
            {"method": "DELETE", "url": job, "headers": bob},
        ):
            assert_same(gateway, request)
        cancelled = gateway.send(lean_on, {"method": "DELETE", "url": job, "headers": alice})
        assert cancelled.status_code == 204, cancelled.text
        assert_same(gateway, {"method": "DELETE", "url": job, "headers": alice})
        assert_same(gateway, {"method": "GET", "url": job, "headers": alice})
    lean_answer = gateway.send(True, {"method": "GET", "url": job, "headers": alice})
    assert lean_answer.json()["status"] == "cancelled"


def test_the_body_guard_s_parse_is_reused_only_when_it_is_exactly_json_loads(
    gateway: Gateway,
) -> None:
    alice = {"Authorization": f"Bearer {gateway.keys['alice']}", "Content-Type": "application/json"}
    exact = [
        b'{"modality":"image","family":"sd","model":"tiny","task":"t2i","prompt":"a","seed":1e400}',
        b'\xef\xbb\xbf{"modality":"image","family":"sd","model":"tiny","task":"t2i","prompt":"a"}',
        b'{"modality":"image","family":"sd","model":"tiny","task":"t2i","prompt":"\\ud800"}',
        b'{"modality":"image","family":"sd","model":"tiny","task":"t2i","prompt":"a","seed":'
        b"1234567890123456789}",
        b'{"modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": "a"',
    ]
    for body in exact:
        assert_same(gateway, {"method": "POST", "url": "/queue", "headers": alice, "content": body})

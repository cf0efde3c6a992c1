"""The usage relay against a real HTTP server standing in for the metering holder: what goes
there (the caller's query and Authorization, the forwarded mark, nothing else), what comes back
(status, JSON body, the headers a client acts on), and the 503s, which name no URL or path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from starlette.requests import Request

from render_gateway.api.http import ApiError
from render_gateway.api.usage_relay import FORWARDED_HEADER, relay_usage_read

SEEN: list[dict[str, Any]] = []


async def holder_usage(request: web.Request) -> web.Response:
    SEEN.append({"query": dict(request.query), "headers": dict(request.headers)})
    answer = request.query.get("answer", "ok")
    if answer == "html":
        return web.Response(status=200, text="<html>proxy</html>", content_type="text/html")
    if answer == "crash":
        return web.Response(status=500, text='{"detail": "Traceback /srv/x.py"}')
    if answer == "busy":
        body = {"error": "usage_unavailable", "message": "retry", "details": {}}
        return web.json_response(body, status=503)
    if answer == "refused":
        body = {"error": "forbidden", "message": "no", "details": {}}
        return web.json_response(body, status=403, headers={"Retry-After": "1", "Server": "x"})
    return web.json_response({"totals": {"requests": 3}}, headers={"X-Request-Id": "theirs"})


@pytest.fixture
async def holder() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/usage", holder_usage)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    SEEN.clear()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def request_for(query: str, headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/usage", "headers": raw,
                    "query_string": query.encode()})  # fmt: skip


async def relay(holder_url: str | None, query: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        response = await relay_usage_read(
            session, holder_url, request_for(query, headers), "/usage"
        )
    return response.status_code, (orjson.loads(response.body), dict(response.headers))


async def test_the_callers_query_and_key_go_along_and_the_answer_comes_back(holder: str) -> None:
    status, (body, headers) = await relay(
        holder, "group_by=model&from=2026-01-01", {"Authorization": "Bearer rk_x", "Cookie": "c"}
    )
    assert (status, body) == (200, {"totals": {"requests": 3}})
    assert "x-request-id" not in headers  # this replica's own is added by its middleware
    sent = SEEN[-1]
    assert sent["query"] == {"group_by": "model", "from": "2026-01-01"}
    assert sent["headers"]["Authorization"] == "Bearer rk_x"
    assert sent["headers"][FORWARDED_HEADER] == "1"
    assert "Cookie" not in sent["headers"]


async def test_the_holders_refusals_are_relayed_with_their_headers(holder: str) -> None:
    status, (body, headers) = await relay(holder, "answer=refused", {})
    assert (status, body["error"], headers["retry-after"]) == (403, "forbidden", "1")
    assert "server" not in headers
    status, (body, headers) = await relay(holder, "answer=busy", {})
    assert (status, body["error"], headers["retry-after"]) == (503, "usage_unavailable", "5")


@pytest.mark.parametrize("answer", ["html", "crash"])
async def test_an_unusable_answer_is_this_replicas_503(holder: str, answer: str) -> None:
    with pytest.raises(ApiError) as raised:
        await relay(holder, f"answer={answer}", {})
    assert (raised.value.status, raised.value.code) == (503, "usage_unavailable")
    assert "Traceback" not in raised.value.message and "/srv" not in raised.value.message
    assert raised.value.headers["Retry-After"] == "5"


async def test_no_holder_a_silent_holder_or_a_relayed_request_is_a_503_naming_nothing(
    holder: str,
) -> None:
    for url, headers in (
        (None, {}),
        ("http://127.0.0.1:9", {}),
        (holder, {FORWARDED_HEADER: "1"}),
    ):
        with pytest.raises(ApiError) as raised:
            await relay(url, "", headers)
        assert (raised.value.status, raised.value.code) == (503, "usage_unavailable")
        assert "127.0.0.1" not in raised.value.message
        assert raised.value.headers["Retry-After"] == "5"
    assert SEEN == []  # the relayed request was never sent on

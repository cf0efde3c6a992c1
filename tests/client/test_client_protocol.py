"""The client's sans-IO core on its own, and its retry bounds against a real HTTP server on
127.0.0.1 that always answers 503 (the gateway's own 429 is in test_render_client_e2e.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from render_gateway.client import (
    AsyncRenderClient,
    RenderClient,
    RenderError,
    RetryPolicy,
    ServerError,
    UnavailableError,
)
from render_gateway.client.errors import error_from
from render_gateway.client.protocol import SseDecoder


def test_the_decoder_reads_what_the_gateway_and_the_standard_send() -> None:
    decoder = SseDecoder()
    lines = [": ping", "id: 7", "event: progress", 'data: {"progress":', "data: 0.5}", ""]
    events = [decoder.feed(line) for line in lines]
    assert events[:-1] == [None] * 5
    last = events[-1]
    assert last is not None and (last.event, last.id, last.data) == (
        "progress",
        7,
        {"progress": 0.5},
    )
    assert not last.terminal
    assert decoder.feed("") is None  # an empty line with nothing before it dispatches nothing
    with pytest.raises(RenderError, match="not JSON"):
        for line in ("event: complete", "data: {oops", ""):
            decoder.feed(line)


def test_retry_waits_are_what_retry_after_asks_but_bounded() -> None:
    policy = RetryPolicy(max_retries=3, max_wait_seconds=5, backoff_seconds=0.5)
    asked = httpx.Response(429, headers={"Retry-After": "2"})
    assert policy.delay(0, asked) == 2
    assert policy.delay(0, httpx.Response(429, headers={"Retry-After": "3600"})) == 5
    assert [policy.delay(n, httpx.Response(503)) for n in range(4)] == [0.5, 1, 2, 4]


def test_an_error_that_is_not_the_gateway_s_shape_keeps_its_status() -> None:
    error = error_from(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(error, ServerError)
    assert (error.status, error.code, error.message) == (502, "http_502", "Bad Gateway")


class _Busy(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        body = b'{"error":"no_capacity","message":"busy","request_id":"req_x","details":{}}'
        self.send_response(503)
        self.send_header("Retry-After", "100")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def busy() -> Iterator[str]:
    _Busy.hits = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_503s_are_retried_a_bounded_number_of_times(busy: str, kind: str) -> None:
    policy = RetryPolicy(max_retries=2, max_wait_seconds=0.05)
    started = time.monotonic()
    with pytest.raises(UnavailableError) as refused:
        if kind == "sync":
            with RenderClient(busy, "rk_x", retry=policy) as client:
                client.usage()
        else:
            async with AsyncRenderClient(busy, "rk_x", retry=policy) as aclient:
                await aclient.usage()
    assert _Busy.hits == 3  # the first try and two retries
    assert time.monotonic() - started < 5  # Retry-After: 100 was capped at 0.05 s
    assert (refused.value.code, refused.value.request_id, refused.value.retry_after) == (
        "no_capacity",
        "req_x",
        100,
    )


def test_an_upload_declares_then_puts_without_credentials() -> None:
    """The two requests ``upload`` makes, read off the sans-IO core: the declaration with the
    key, the PUT of the signed URL without it, with the type read from the bytes."""
    from render_gateway.client.protocol import Protocol, image_type_of

    data = b"\x89PNG\r\n\x1a\n" + b"\0" * 20
    assert image_type_of(data) == "image/png"
    assert image_type_of(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert image_type_of(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert image_type_of(b"GIF89a") is None
    core = Protocol("http://gw.test:8080", "rk_secret", RetryPolicy(max_retries=0))
    operation = core.upload(data, None)
    declare = next(operation)
    assert isinstance(declare, httpx.Request)
    assert (declare.method, str(declare.url)) == ("POST", "http://gw.test:8080/uploads")
    assert declare.headers["authorization"] == "Bearer rk_secret"
    assert declare.content == b'{"content_type":"image/png","bytes":28}'
    ticket = {"id": "a_x", "upload_url": "http://gw.test:8080/uploads/a_x?signature=s"}
    put = operation.send(httpx.Response(200, json=ticket, request=declare))
    assert isinstance(put, httpx.Request)
    assert (put.method, str(put.url)) == ("PUT", ticket["upload_url"])
    assert "authorization" not in put.headers and put.headers["content-type"] == "image/png"
    assert put.content == data
    stored = {"id": "a_x", "asset_url": "/assets/a_x?expires=1&signature=t",
              "content_type": "image/png", "bytes": 28}  # fmt: skip
    with pytest.raises(StopIteration) as done:
        operation.send(httpx.Response(201, json=stored, headers={"X-Request-Id": "req_1"}))
    asset = done.value.value
    assert asset.url == "http://gw.test:8080/assets/a_x?expires=1&signature=t"
    assert (asset.id, asset.path, asset.size, asset.request_id) == (
        "a_x",
        "/assets/a_x",
        28,
        "req_1",
    )
    with pytest.raises(RenderError, match="not a PNG, JPEG or WebP"):
        next(core.upload(b"GIF89a....", None))  # refused before anything is sent

"""The CLI's client for a running gateway, against a real HTTP server on 127.0.0.1.

The server answers every request with one canned response and records what it received, so
each test sees both what the client sent and what it made of the answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from render_gateway.cli.gateway_client import GatewayClient, GatewayError

from support.processes import free_port

TOKEN = "rk_test_secret"


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    body: bytes


@dataclass
class CannedGateway:
    """What every request gets back, and every request that came."""

    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    url: str = ""


def _handler(gateway: CannedGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            gateway.received.append(
                Received(
                    self.command, parts.path, parse_qs(parts.query),
                    self.headers.get("Authorization"), self.rfile.read(length),
                )
            )  # fmt: skip
            self.send_response(gateway.status)
            self.send_header("Content-Type", gateway.content_type)
            self.send_header("Content-Length", str(len(gateway.body)))
            for name, value in gateway.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(gateway.body)

        do_GET = _answer
        do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass  # the test output stays the tests'

    return Handler


@pytest.fixture
def canned() -> Iterator[Callable[..., CannedGateway]]:
    servers: list[ThreadingHTTPServer] = []

    def start(
        status: int = 200, body: bytes = b"{}", content_type: str = "application/json"
    ) -> CannedGateway:
        gateway = CannedGateway(status, body, content_type)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(gateway))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        gateway.url = f"http://127.0.0.1:{server.server_address[1]}"
        return gateway

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_usage_sends_the_token_and_only_the_given_filters(
    canned: Callable[..., CannedGateway],
) -> None:
    report = {"customer_id": "acme", "currency": "USD", "rows": []}
    gateway = canned(body=orjson.dumps(report))
    with GatewayClient(gateway.url, TOKEN, timeout=5) as client:
        assert client.usage("acme", "2024-05-01", None, "model") == report
    [request] = gateway.received
    assert (request.method, request.path) == ("GET", "/usage")
    assert request.authorization == f"Bearer {TOKEN}"
    # No ``to``: the gateway's default applies, as when the CLI reads the store itself.
    assert request.query == {"customer_id": ["acme"], "from": ["2024-05-01"], "group_by": ["model"]}


def test_reconcile_posts_the_window_threshold_and_repair(
    canned: Callable[..., CannedGateway],
) -> None:
    gateway = canned(body=b'{"status": "reconciled"}')
    # A trailing slash on the base URL does not double the path's.
    with GatewayClient(gateway.url + "/", TOKEN, timeout=5) as client:
        report = client.reconcile(
            "2024-05-01T00:00:00+00:00", "2024-05-02T00:00:00+00:00", 0.01, True
        )
    assert report == {"status": "reconciled"}
    [request] = gateway.received
    assert (request.method, request.path) == ("POST", "/reconciliations")
    assert request.authorization == f"Bearer {TOKEN}"
    assert orjson.loads(request.body) == {
        "from": "2024-05-01T00:00:00+00:00", "to": "2024-05-02T00:00:00+00:00",
        "threshold": 0.01, "repair": True,
    }  # fmt: skip


def test_a_refusal_names_the_call_its_status_and_the_gateway_s_words(
    canned: Callable[..., CannedGateway],
) -> None:
    refusal = {"error": "forbidden", "message": "admins only", "request_id": "req_1", "details": {}}
    gateway = canned(status=403, body=orjson.dumps(refusal))
    with (
        GatewayClient(gateway.url, TOKEN, timeout=5) as client,
        pytest.raises(GatewayError) as refused,
    ):
        client.usage(None, None, None, "model,day")
    assert str(refused.value) == "GET /usage answered 403 forbidden: admins only"


def test_a_refusal_in_another_shape_keeps_its_status(
    canned: Callable[..., CannedGateway],
) -> None:
    gateway = canned(status=403, body=b'{"error": {"code": "forbidden"}}')  # a proxy's, say
    with (
        GatewayClient(gateway.url, TOKEN, timeout=5) as client,
        pytest.raises(GatewayError) as refused,
    ):
        client.usage(None, None, None, "model,day")
    assert str(refused.value) == "GET /usage answered 403: Forbidden"


@pytest.mark.parametrize(
    ("body", "content_type", "what"),
    [
        (b"<html>a proxy's page</html>", "text/html", "not JSON"),
        (b"\xff\xfe not text", "application/json", "not JSON"),
        (b'[{"status": "reconciled"}]', "application/json", "not an object"),
    ],
)
def test_an_answer_that_is_not_a_json_object_is_an_error(
    canned: Callable[..., CannedGateway], body: bytes, content_type: str, what: str
) -> None:
    gateway = canned(body=body, content_type=content_type)
    with (
        GatewayClient(gateway.url, TOKEN, timeout=5) as client,
        pytest.raises(GatewayError, match=what) as failed,
    ):
        client.reconcile("2024-05-01", "2024-05-02", 0.0, False)
    assert str(failed.value).startswith("POST /reconciliations answered")


def test_a_redirect_is_not_followed(canned: Callable[..., CannedGateway]) -> None:
    # Pointing at a route of the same server, which would record a second request.
    gateway = canned(status=307)
    gateway.headers["Location"] = f"{gateway.url}/elsewhere"
    with (
        GatewayClient(gateway.url, TOKEN, timeout=5) as client,
        pytest.raises(GatewayError, match="GET /usage answered 307"),
    ):
        client.usage(None, None, None, "model")
    assert [r.path for r in gateway.received] == ["/usage"]


def test_a_gateway_that_is_not_there_is_named() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with (
        GatewayClient(url, TOKEN, timeout=5) as client,
        pytest.raises(GatewayError) as unreachable,
    ):
        client.usage(None, None, None, "model")
    assert str(unreachable.value).startswith(f"cannot reach the gateway at {url}: ")


def test_a_url_that_is_not_one_is_named() -> None:
    with (
        pytest.raises(GatewayError, match="cannot reach the gateway at gateway:8080"),
        GatewayClient("gateway:8080", TOKEN, timeout=5) as client,
    ):
        client.usage(None, None, None, "model")

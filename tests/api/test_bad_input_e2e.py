"""Bad input against a real gateway process: every answer is a 4xx with the JSON error body,
never a 500 or a connection held open. Raw sockets send what an HTTP client library will not
(a body shorter than its Content-Length, an oversized chunked body)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from support.gateway import ONE_WORKER_CONFIG, GatewayProcess, start_gateway, stop_gateway
from support.processes import WorkerProcess
from support.worker_api import wait_idle

BODY_LIMIT = 65536
CONFIG = ONE_WORKER_CONFIG.replace(
    "[gateway]\n", f"[gateway]\nmax_body_bytes = {BODY_LIMIT}\nbody_timeout_seconds = 1.0\n", 1
)


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("bad-input"), CONFIG.format(worker=worker.url))
    yield process
    stop_gateway(process)
    wait_idle(worker)


@pytest.fixture(scope="module")
def auth(gateway: GatewayProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.admin_key}"}


def job(**fields: Any) -> dict[str, Any]:
    return {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
            "prompt": "a fox", "steps": 1, **fields}  # fmt: skip


def assert_json_error(status: int, body: bytes, expected_status: int, code: str) -> None:
    assert status == expected_status, body[:500]
    error = orjson.loads(body)
    assert error["error"] == code
    assert error["request_id"].startswith("req_") and error["message"]
    assert "Traceback" not in error["message"]


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("route", ["/queue", "/image/sd/tiny/t2i"])
@pytest.mark.parametrize(
    ("name", "extra"),
    [("nested 300 deep", {"deep": nested(300)}), ("nested 70 deep", {"deep": nested(70)})],
)
def test_deeply_nested_json_is_a_400(
    gateway: GatewayProcess, auth: dict[str, str], route: str, name: str, extra: dict[str, Any]
) -> None:
    body = job(**extra)
    if route != "/queue":
        body = {k: v for k, v in body.items() if k not in ("modality", "family", "model", "task")}
    answer = httpx.post(gateway.url + route, json=body, headers=auth, timeout=30)
    assert_json_error(answer.status_code, answer.content, 400, "invalid_request")
    assert "nested deeper" in answer.json()["message"]


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**400])
def test_an_integer_beyond_64_bits_in_any_field_is_a_400(
    gateway: GatewayProcess, auth: dict[str, str], value: int
) -> None:
    # Sent as raw JSON text: the gateway must refuse the number, whatever field holds it.
    marker = 123456789
    for body in (job(extra_field=marker), job(extra={"inner": [marker]})):
        text = orjson.dumps(body).replace(str(marker).encode(), str(value).encode())
        assert str(value).encode() in text
        answer = httpx.post(
            gateway.url + "/queue",
            content=text,
            headers={**auth, "Content-Type": "application/json"},
            timeout=30,
        )
        assert_json_error(answer.status_code, answer.content, 400, "invalid_request")
        assert "64 bits" in answer.json()["message"]


def test_an_integer_within_64_bits_is_still_accepted(
    gateway: GatewayProcess, auth: dict[str, str]
) -> None:
    answer = httpx.post(
        gateway.url + "/queue", json=job(extra_field=2**63 - 1), headers=auth, timeout=30
    )
    assert answer.status_code == 202, answer.text


def test_a_5000_digit_last_event_id_is_a_400(gateway: GatewayProcess, auth: dict[str, str]) -> None:
    job_id = httpx.post(gateway.url + "/queue", json=job(), headers=auth, timeout=30).json()["id"]
    for value in ("9" * 5000, "-1", "abc", "1" * 19):
        answer = httpx.get(
            f"{gateway.url}/jobs/{job_id}/events",
            headers={**auth, "Last-Event-ID": value},
            timeout=10,
        )
        assert_json_error(answer.status_code, answer.content, 400, "invalid_request")


def raw_exchange(gateway: GatewayProcess, request: bytes, timeout: float) -> tuple[int, bytes]:
    """Send ``request`` as is; read until the server closes. (status, body)."""
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may answer and close before it has read everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def test_a_chunked_body_over_the_limit_is_a_413(
    gateway: GatewayProcess, auth: dict[str, str]
) -> None:
    payload = orjson.dumps(job(padding="x" * (2 * BODY_LIMIT)))
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(payload[i : i + 8192]), payload[i : i + 8192])
        for i in range(0, len(payload), 8192)
    )
    request = (
        b"POST /queue HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: {auth['Authorization']}\r\n".encode()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunks
        + b"0\r\n\r\n"
    )
    status, body = raw_exchange(gateway, request, timeout=30)
    assert_json_error(status, body, 413, "payload_too_large")


def test_a_body_shorter_than_its_content_length_times_out_with_408(
    gateway: GatewayProcess, auth: dict[str, str]
) -> None:
    payload = orjson.dumps(job())
    request = (
        b"POST /queue HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: {auth['Authorization']}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(payload) + 100}\r\n\r\n".encode()
        + payload
    )
    started = time.monotonic()
    status, body = raw_exchange(gateway, request, timeout=30)
    waited = time.monotonic() - started
    assert_json_error(status, body, 408, "request_timeout")
    # body_timeout_seconds = 1: answered (and closed, or raw_exchange would still wait) soon.
    assert 0.9 <= waited < 5, waited

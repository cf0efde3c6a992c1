"""``GET /ws`` of a real gateway process in front of the real reference worker, driven by a
real WebSocket client (``websockets``): jobs end to end and multiplexed on one connection,
cancel by message, bad messages, refused credentials, and clients that go away or read slowly
— the jobs are ordinary queued jobs and settle whatever the connection does."""

from __future__ import annotations

import contextlib
import io
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from support.gateway import (
    ONE_WORKER_CONFIG,
    GatewayProcess,
    bearer,
    start_gateway,
    stop_gateway,
    wait_done,
    wait_status,
)
from support.processes import WorkerProcess
from support.worker_api import wait_idle

TERMINAL = ("complete", "error")


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    # At info level uvicorn logs every handshake's path and query: what must never hold a key.
    process = start_gateway(
        tmp_path_factory.mktemp("ws"), ONE_WORKER_CONFIG.format(worker=worker.url), log_level="info"
    )
    yield process
    stop_gateway(process)


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker, timeout=120)


def ws_url(gateway: GatewayProcess) -> str:
    return gateway.url.replace("http://", "ws://") + "/ws"


def open_socket(gateway: GatewayProcess, key: str) -> ClientConnection:
    return connect(ws_url(gateway), additional_headers=bearer(key), open_timeout=10)


def generate(client_id: Any, **request: Any) -> dict[str, Any]:
    return {"type": "generate", "id": client_id, "modality": "image", "family": "sd",
            "model": "tiny", "task": "t2i", "request": {"prompt": "a fox", **request}}  # fmt: skip


def send(ws: ClientConnection, message: Any) -> None:
    ws.send(orjson.dumps(message).decode())


def recv(ws: ClientConnection, timeout: float = 60) -> dict[str, Any]:
    message: dict[str, Any] = orjson.loads(ws.recv(timeout=timeout))
    return message


def until_terminal(
    ws: ClientConnection, ids: set[Any], timeout: float = 120
) -> dict[Any, list[dict[str, Any]]]:
    """Every message, by id, until each of ``ids`` has had its terminal message."""
    deadline = time.monotonic() + timeout
    seen: dict[Any, list[dict[str, Any]]] = {i: [] for i in ids}
    pending = set(ids)
    while pending:
        message = recv(ws, max(0.1, deadline - time.monotonic()))
        seen.setdefault(message["id"], []).append(message)
        if message["type"] in TERMINAL and message["id"] in pending:
            pending.discard(message["id"])
    return seen


def metrics(gateway: GatewayProcess) -> dict[str, float]:
    text = httpx.get(gateway.url + "/metrics").text
    values = {}
    for line in text.splitlines():
        if line.startswith("render_ws_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def wait_metrics(gateway: GatewayProcess, wanted: dict[str, float], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = metrics(gateway)
        if all(current.get(k) == v for k, v in wanted.items()):
            return
        time.sleep(0.1)
    raise AssertionError(f"metrics never reached {wanted}: {metrics(gateway)}")


def test_one_job_end_to_end(gateway: GatewayProcess) -> None:
    key = gateway.new_key("ws-one")
    with open_socket(gateway, key) as ws:
        send(ws, generate("first", steps=4, seed=7))
        messages = until_terminal(ws, {"first"})["first"]
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "ack" and kinds[-1] == "complete", kinds
    assert "started" in kinds and "progress" in kinds, kinds
    assert "frame" not in kinds  # no backend sends previews (docs/API.md)
    ack = messages[0]
    job_id = ack["job_id"]
    assert job_id.startswith("j_") and ack["request_id"].startswith("req_")
    assert ack["status"] == "queued" and ack["rate_limit"]["limit"] > 0
    assert all(m["id"] == "first" and m["job_id"] == job_id for m in messages)
    progress = [m for m in messages if m["type"] == "progress"]
    assert [m["step"] for m in progress] == sorted(m["step"] for m in progress)
    assert 0 < progress[-1]["progress"] <= 1
    complete = messages[-1]
    assert complete["output"] == complete["outputs"][0]
    # The output URL is signed: it downloads without credentials.
    assert complete["output"].startswith("/assets/a_") and "signature=" in complete["output"]
    image = httpx.get(gateway.url + complete["output"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).format == "PNG"
    # The same job as GET /jobs/{id} knows it (an ordinary queued job).
    job = wait_done(gateway, bearer(key), job_id)
    assert job["status"] == "complete" and job["seed"] == 7
    wait_metrics(gateway, {"render_ws_connections": 0, "render_ws_jobs_followed": 0})


def test_two_jobs_multiplexed_on_one_socket(gateway: GatewayProcess) -> None:
    key = gateway.new_key("ws-two")
    with open_socket(gateway, key) as ws:
        send(ws, generate(1, steps=3))
        send(ws, generate("two", steps=3))
        seen = until_terminal(ws, {1, "two"})
    jobs = set()
    for client_id, messages in seen.items():
        kinds = [m["type"] for m in messages]
        assert kinds[0] == "ack" and kinds[-1] == "complete" and "started" in kinds, kinds
        job_ids = {m["job_id"] for m in messages}
        assert len(job_ids) == 1, (client_id, job_ids)
        jobs |= job_ids
    assert len(jobs) == 2


def test_cancel_by_message(gateway: GatewayProcess) -> None:
    key = gateway.new_key("ws-cancel")
    with open_socket(gateway, key) as ws:
        send(ws, generate("long", steps=500))
        ack = recv(ws)
        assert ack["type"] == "ack", ack
        while (message := recv(ws))["type"] != "started":
            assert message["type"] == "position", message
        send(ws, {"type": "cancel", "id": "long"})
        messages = until_terminal(ws, {"long"})["long"]
        cancelling = next(m for m in messages if m["type"] == "cancelling")
        assert cancelling["outcome"] == "stopping" and cancelling["job_id"] == ack["job_id"]
        end = messages[-1]
        assert end["type"] == "error" and end["error"] == "cancelled", end
        assert end["job_id"] == ack["job_id"]
        # A cancel for an id with no job in flight here: an error for that id.
        send(ws, {"type": "cancel", "id": "long"})
        refused = recv(ws)
        assert refused["type"] == "error" and refused["id"] == "long"
        assert refused["error"] == "job_not_found"
    job = wait_done(gateway, bearer(key), ack["job_id"])
    assert job["status"] == "cancelled"


def test_bad_messages_get_errors_and_the_socket_goes_on(gateway: GatewayProcess) -> None:
    key = gateway.new_key("ws-bad")
    with open_socket(gateway, key) as ws:
        cases: list[tuple[Any, Any, str]] = [
            ("{not json", None, "invalid_request"),
            ("[1, 2]", None, "invalid_request"),
            ({"type": "dance", "id": "d"}, "d", "invalid_request"),
            ({"id": "t"}, "t", "invalid_request"),
            ({"type": "generate"}, None, "invalid_request"),  # no id
            ({"type": "generate", "id": True}, None, "invalid_request"),
            (generate("np", prompt=""), "np", "invalid_request"),
            ({**generate("nm"), "model": "nope"}, "nm", "model_not_found"),
            ({**generate("top"), "prompt": "beside"}, "top", "invalid_request"),
            (generate("in", priority="high"), "in", "invalid_request"),
            ({**generate("hi"), "priority": "high"}, "hi", "priority_not_allowed"),
            (generate("st", steps="many"), "st", "invalid_request"),
            ('{"type": "generate", "id": "big", "n": 1e999}', None, "invalid_request"),
            ("[" * 100 + "]" * 100, None, "invalid_request"),
        ]
        for raw, client_id, code in cases:
            ws.send(raw if isinstance(raw, str) else orjson.dumps(raw).decode())
            answer = recv(ws, timeout=10)
            assert answer["type"] == "error", (raw, answer)
            assert answer["id"] == client_id and answer["error"] == code, (raw, answer)
            assert answer["message"] and "Traceback" not in answer["message"], answer
        ws.send(b"\x00binary")
        answer = recv(ws, timeout=10)
        assert answer["type"] == "error" and answer["error"] == "invalid_request"
        # The field names of a refused body point into "request", as the message has them.
        send(ws, generate("np2", prompt=""))
        problems = recv(ws)["details"]["problems"]
        assert problems[0]["field"] == "request.prompt", problems
        # POST /queue refuses the same body with the same code.
        flat = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": ""}
        http = httpx.post(gateway.url + "/queue", json=flat, headers=bearer(key))
        assert http.status_code == 400 and http.json()["error"] == "invalid_request"
        # After all that the connection still runs jobs.
        send(ws, generate("ok", steps=2))
        assert [m["type"] for m in until_terminal(ws, {"ok"})["ok"]][-1] == "complete"
    assert "Traceback" not in gateway.log()


def test_no_or_forged_credentials_are_refused_at_the_handshake(gateway: GatewayProcess) -> None:
    for headers, code in (
        ({}, "missing_credentials"),
        (bearer("rk_" + "A" * 40), "invalid_api_key"),
        (bearer("not-a-token"), "invalid_credentials"),
        (bearer("a.b.c"), "unsupported_credentials"),
    ):
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(gateway), additional_headers=headers, open_timeout=10)
        assert refused.value.response.status_code == 401
        assert orjson.loads(refused.value.response.body)["error"] == code
    # A token in the query is not read (it would be in every access log): no credentials.
    key = gateway.new_key("ws-query")
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{ws_url(gateway)}?token={key}&api_key={key}", open_timeout=10)
    assert orjson.loads(refused.value.response.body)["error"] == "missing_credentials"
    forged = "rk_" + "B" * 40
    with pytest.raises(InvalidStatus) as refused:
        connect(
            ws_url(gateway), subprotocols=[Subprotocol("render"), Subprotocol(f"bearer.{forged}")]
        )
    assert refused.value.response.status_code == 401


def test_the_token_may_come_as_a_subprotocol_and_is_not_logged(
    gateway: GatewayProcess,
) -> None:
    key = gateway.new_key("ws-browser")
    offered = [Subprotocol("render"), Subprotocol(f"bearer.{key}")]
    with connect(ws_url(gateway), subprotocols=offered) as ws:
        assert ws.subprotocol == "render"  # the token is never echoed back
        send(ws, generate("b", steps=2))
        assert until_terminal(ws, {"b"})["b"][-1]["type"] == "complete"
    log = gateway.log()
    assert '"WebSocket /ws" [accepted]' in log  # the handshake was logged, without the key
    assert key not in log


def test_a_revoked_key_closes_the_socket_within_seconds(gateway: GatewayProcess) -> None:
    key = gateway.new_key("ws-revoked")
    with open_socket(gateway, key) as ws:
        listed = next(
            line for line in gateway.cli("keys", "list").splitlines() if "ws-revoked" in line
        )
        key_id = next(p for p in listed.replace("│", " ").split() if p.startswith("key_"))
        gateway.cli("keys", "revoke", key_id)
        revoked_at = time.monotonic()
        message = recv(ws, timeout=10)
        assert message["type"] == "error" and message["error"] == "revoked_api_key"
        with pytest.raises(ConnectionClosed) as closed:
            recv(ws, timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert time.monotonic() - revoked_at < 6


def test_a_client_that_vanishes_mid_job_leaves_the_job_to_complete(
    gateway: GatewayProcess,
) -> None:
    key = gateway.new_key("ws-gone")
    # Whatever the client library makes of a socket closed under it, at its exit, is not
    # what is tested (assertions still fail the test).
    with contextlib.suppress(OSError, ConnectionClosed), open_socket(gateway, key) as ws:
        send(ws, generate("gone", steps=40))
        ack = recv(ws)
        while recv(ws)["type"] != "started":
            pass
        assert metrics(gateway)["render_ws_jobs_followed"] == 1
        # No close frame: the TCP connection just goes.
        ws.socket.shutdown(socket.SHUT_RDWR)
        ws.socket.close()
    job = wait_done(gateway, bearer(key), ack["job_id"])
    assert job["status"] == "complete" and job["output"]
    wait_metrics(gateway, {"render_ws_connections": 0, "render_ws_jobs_followed": 0})


def test_a_slow_reader_does_not_stall_its_jobs(gateway: GatewayProcess) -> None:
    key = gateway.new_key("ws-slow")
    # max_queue=1: the client stops taking frames off the TCP connection as soon as one waits.
    with connect(ws_url(gateway), additional_headers=bearer(key), max_queue=1) as ws:
        send(ws, generate("slow", steps=60))
        ack = recv(ws)
        assert ack["type"] == "ack"
        # Nothing more is read while the job runs: it still runs to its end.
        job = wait_status(gateway, bearer(key), ack["job_id"], {"complete"}, 120)
        time.sleep(0.5)
        messages = until_terminal(ws, {"slow"})["slow"]
    # Progress may have been dropped for the slow reader; the terminal message never is.
    assert messages[-1]["type"] == "complete" and messages[-1]["job_id"] == job["id"]
    wait_metrics(gateway, {"render_ws_connections": 0, "render_ws_jobs_followed": 0})


def test_too_many_jobs_on_one_socket(gateway: GatewayProcess) -> None:
    key = gateway.new_key("ws-many")  # first: the CLI takes a while, the blocker does not wait
    admin = bearer(gateway.admin_key)
    blocker = httpx.post(gateway.url + "/queue", headers=admin, json={
        "modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": "x",
        "steps": 500}).json()["id"]  # fmt: skip
    try:
        wait_status(gateway, admin, blocker, {"running"})
        with open_socket(gateway, key) as ws:
            for n in range(16):
                send(ws, generate(n, steps=1))
                while (answer := recv(ws))["type"] == "position":
                    pass
                assert answer["type"] == "ack" and answer["id"] == n, answer
            send(ws, generate(16, steps=1))
            while (answer := recv(ws))["type"] == "position":
                pass
            assert answer["type"] == "error" and answer["id"] == 16, answer
            assert answer["error"] == "too_many_jobs" and answer["details"]["limit"] == 16
            for n in range(16):
                send(ws, {"type": "cancel", "id": n})
            seen = until_terminal(ws, set(range(16)))
            assert all(m[-1].get("error") == "cancelled" for m in seen.values()), seen
    finally:
        httpx.delete(f"{gateway.url}/jobs/{blocker}", headers=admin)
    wait_done(gateway, admin, blocker)

"""A webhook outlives a kill -9 of the gateway: a job whose receiver is down finishes, the
gateway dies with the delivery still retrying, the receiver comes up, and the restarted gateway
(same data dir) delivers it, signed, exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest

from render_gateway.application.webhooks import WebhookSecret, verify
from render_gateway.stores.webhooks import open_webhook_store

from support.gateway import LOOPBACK_WEBHOOKS_CONFIG, bearer, start_gateway, stop_gateway, wait_done
from support.processes import WorkerProcess, free_port
from support.worker_api import wait_idle

CONFIG = LOOPBACK_WEBHOOKS_CONFIG  # the receivers are on 127.0.0.1 over http


@dataclass
class Received:
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver_port() -> int:
    return free_port()  # nothing listens there until the test starts the receiver


@pytest.fixture
def received() -> Received:
    return Received()


@pytest.fixture
def start_receiver() -> Iterator[list[ThreadingHTTPServer]]:
    """The receivers the test started when it wanted them up; stopped at the end."""
    servers: list[ThreadingHTTPServer] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def serve_receiver(port: int, received: Received) -> ThreadingHTTPServer:
    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()
            received.arrived.set()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def pending_deliveries(data_dir: Path) -> int:
    """Read through the store's own Protocol, on a connection of this process: what is on disk."""

    async def count() -> int:
        store = open_webhook_store(f"sqlite://{data_dir.resolve() / 'webhooks.db'}")
        try:
            return await store.pending()
        finally:
            await store.close()

    return asyncio.run(count())


def webhook_metric(gateway_url: str, outcome: str) -> float:
    prefix = f'render_webhooks{{outcome="{outcome}"}} '
    for line in httpx.get(gateway_url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    raise AssertionError(f"no {prefix!r} in /metrics")


def test_a_webhook_pending_at_a_kill_9_arrives_once_signed_after_the_restart(
    worker: WorkerProcess,
    tmp_path_factory: pytest.TempPathFactory,
    receiver_port: int,
    received: Received,
    start_receiver: list[ThreadingHTTPServer],
) -> None:
    data_dir = tmp_path_factory.mktemp("gateway-webhook-restart")
    config = CONFIG.format(worker=worker.url)
    first = start_gateway(data_dir, config)
    admin = bearer(first.admin_key)
    hook = f"http://127.0.0.1:{receiver_port}/hook"
    body = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
            "prompt": "a fox", "steps": 1, "webhook": hook}  # fmt: skip
    response = httpx.post(first.url + "/queue", json=body, headers=admin, timeout=30)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert wait_done(first, admin, job_id)["status"] == "complete"

    # The delivery is on disk (another connection sees it) and failing: the receiver is down.
    deadline = time.monotonic() + 30
    while pending_deliveries(data_dir) != 1:
        assert time.monotonic() < deadline, "the delivery never reached the store"
        time.sleep(0.05)
    assert webhook_metric(first.url, "delivered") == 0
    assert webhook_metric(first.url, "failed") == 0
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    wait_idle(worker)
    assert received.deliveries == []

    start_receiver.append(serve_receiver(receiver_port, received))
    second = start_gateway(data_dir, config)
    try:
        assert second.admin_key == ""  # the same data dir, not a fresh gateway
        # Due at once after the restart, or at worst when the lease of an attempt the kill
        # interrupted ends (the sender's timeout plus its margin: 30 s).
        assert received.arrived.wait(90), "the webhook never arrived after the restart\n" + (
            second.log()
        )
        deadline = time.monotonic() + 30
        while webhook_metric(second.url, "delivered") != 1:
            assert time.monotonic() < deadline, "the delivery was never recorded"
            time.sleep(0.05)
        assert webhook_metric(second.url, "pending") == 0
    finally:
        stop_gateway(second)
    assert pending_deliveries(data_dir) == 0

    [(headers, payload)] = received.deliveries  # exactly once: nothing more after the stop
    secret = WebhookSecret.parse((data_dir / "webhook_secret").read_text())
    assert verify(secret, headers, payload, time.time())
    assert headers["webhook-id"] == f"{job_id}.complete"
    job = orjson.loads(payload)
    assert (job["id"], job["status"]) == (job_id, "complete")
    assert job["output"]

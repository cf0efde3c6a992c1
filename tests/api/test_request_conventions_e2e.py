"""The peers' request conventions, through a real gateway process and a real worker:
``Prefer: wait`` on POST /queue, ``Prefer: respond-async`` on a sync route, a time-to-start
deadline (``Cancel-After`` / ``start_deadline``) and webhook event filters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest

from render_gateway.application.webhooks import WebhookSecret, verify

from support.gateway import (
    LOOPBACK_WEBHOOKS_CONFIG,
    GatewayProcess,
    start_gateway,
    stop_gateway,
    wait_done,
    wait_status,
)
from support.processes import WorkerProcess
from support.worker_api import wait_idle

CONFIG = LOOPBACK_WEBHOOKS_CONFIG  # the receivers are on 127.0.0.1 over http


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    data = tmp_path_factory.mktemp("conventions")
    process = start_gateway(data, CONFIG.format(worker=worker.url))
    yield process
    stop_gateway(process)


@pytest.fixture(scope="module")
def alice(gateway: GatewayProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.new_key('alice')}"}


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker)


def body(**fields: Any) -> dict[str, Any]:
    return {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
            "prompt": "a fox", **fields}  # fmt: skip


def queue(
    gateway: GatewayProcess, headers: dict[str, str], extra_headers: dict[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:  # fmt: skip
    return httpx.post(
        gateway.url + "/queue", json=body(**fields), headers={**headers, **(extra_headers or {})},
        timeout=90,
    )  # fmt: skip


def running(gateway: GatewayProcess, headers: dict[str, str], steps: int = 500) -> str:
    """A long job, once it holds the worker's one slot."""
    job_id: str = queue(gateway, headers, steps=steps).json()["id"]
    wait_status(gateway, headers, job_id, {"running"})
    return job_id


def cancel(gateway: GatewayProcess, headers: dict[str, str], job_id: str) -> None:
    httpx.delete(f"{gateway.url}/jobs/{job_id}", headers=headers)
    wait_done(gateway, headers, job_id)


# ------------------------------------------------------------------ Prefer: wait


def test_prefer_wait_answers_with_the_ended_job(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    answer = queue(gateway, alice, {"Prefer": "wait=60"}, steps=2)
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["status"] == "complete" and job["output"].startswith("/assets/")
    assert job["usage"]["gpu_seconds"] > 0
    assert answer.headers["preference-applied"] == "wait=60"
    assert answer.headers["location"] == f"/jobs/{job['id']}"
    assert httpx.get(gateway.url + job["output"]).content[:8] == b"\x89PNG\r\n\x1a\n"


def test_prefer_wait_that_runs_out_answers_202_as_without_it(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    blocker = running(gateway, alice)
    try:
        started = time.monotonic()
        answer = queue(gateway, alice, {"Prefer": "wait=1"}, steps=1)
        waited = time.monotonic() - started
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "queued" and answer.json()["position"] == 0
        assert answer.headers["preference-applied"] == "wait=1"
        assert 0.9 < waited < 10, waited
        # Unknown or malformed preferences are ignored (RFC 7240): no wait at all.
        started = time.monotonic()
        plain = queue(gateway, alice, {"Prefer": "wait=soon, handling=lenient"}, steps=1)
        assert plain.status_code == 202 and "preference-applied" not in plain.headers
        assert time.monotonic() - started < 5
        queued = [answer.json()["id"], plain.json()["id"]]
    finally:
        cancel(gateway, alice, blocker)
    for job_id in queued:
        assert wait_done(gateway, alice, job_id)["status"] == "complete"


# ------------------------------------------------------------------ Prefer: respond-async


def test_respond_async_queues_a_sync_request(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    answer = httpx.post(
        gateway.url + "/image/sd/tiny/t2i", json={"prompt": "a fox", "steps": 2},
        headers={**alice, "Prefer": "respond-async"}, timeout=60,
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    assert answer.headers["preference-applied"] == "respond-async"
    queued = answer.json()
    assert queued["events_url"] == f"/jobs/{queued['id']}/events"
    assert answer.headers["location"] == f"/jobs/{queued['id']}"
    done = wait_done(gateway, alice, queued["id"])
    assert done["status"] == "complete" and done["usage"]["gpu_seconds"] > 0
    # Without the preference the same route answers with the bytes.
    now = httpx.post(gateway.url + "/image/sd/tiny/t2i", json={"prompt": "a fox", "steps": 1},
                     headers=alice, timeout=60)  # fmt: skip
    assert now.status_code == 200 and now.content[:4] == b"\x89PNG"


# ------------------------------------------------------------------ start deadlines


@pytest.mark.parametrize(
    ("headers", "fields"),
    [({"Cancel-After": "1s"}, {}), ({}, {"start_deadline": 1})],
    ids=["Cancel-After", "start_deadline"],
)
def test_a_job_not_started_by_its_deadline_is_cancelled_unbilled(
    gateway: GatewayProcess, alice: dict[str, str], headers: dict[str, str], fields: dict[str, Any]
) -> None:
    blocker = running(gateway, alice)
    try:
        late = queue(gateway, alice, headers, steps=1, **fields)
        assert late.status_code == 202, late.text
        ended = wait_done(gateway, alice, late.json()["id"], timeout=30)
    finally:
        cancel(gateway, alice, blocker)
    assert ended["status"] == "cancelled"
    assert ended["error"]["code"] == "deadline_exceeded"
    assert ended.get("usage") is None  # never ran: nothing billed
    events = httpx.get(f"{gateway.url}/jobs/{ended['id']}/events", headers=alice, timeout=30)
    assert "event: error" in events.text and "deadline_exceeded" in events.text


def test_a_deadline_that_is_met_changes_nothing(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    answer = queue(gateway, alice, {"Cancel-After": "1h30m"}, steps=1)
    assert answer.status_code == 202
    assert wait_done(gateway, alice, answer.json()["id"])["status"] == "complete"


@pytest.mark.parametrize("value", ["soon", "-5s", "1d", "5 s", "1h-1m"])
def test_a_malformed_cancel_after_is_a_400_and_queues_nothing(
    gateway: GatewayProcess, alice: dict[str, str], value: str
) -> None:
    answer = queue(gateway, alice, {"Cancel-After": value}, steps=1)
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["error"] == "invalid_request" and "Cancel-After" in error["message"]


# ------------------------------------------------------------------ webhook event filters


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, data))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def ids(self) -> list[str]:
        return [headers["webhook-id"] for headers, _ in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiving = Receiver()
    yield receiving
    receiving.server.shutdown()


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_webhook_events_filter_sends_start_progress_and_completed(
    gateway: GatewayProcess, alice: dict[str, str], receiver: Receiver
) -> None:
    events = ["start", "progress", "completed"]
    answer = queue(gateway, alice, steps=200, webhook=receiver.url, webhook_events_filter=events)
    job_id = answer.json()["id"]
    assert wait_done(gateway, alice, job_id)["status"] == "complete"
    wait_for(lambda: f"{job_id}.complete" in receiver.ids())
    secret = WebhookSecret.parse((gateway.data_dir / "webhook_secret").read_text())
    ids = receiver.ids()
    assert ids[0] == f"{job_id}.start", ids
    progress = [i for i in ids if i.startswith(f"{job_id}.progress.")]
    assert progress, ids  # a 200-step run takes seconds: at least one, at most one a second
    assert len(progress) == len(set(ids) & set(progress))  # each step's delivery once
    for headers, data in receiver.received:
        assert verify(secret, headers, data, time.time())
        payload = orjson.loads(data)
        assert payload["id"] == job_id
        kind = headers["webhook-id"].split(".")[1]
        assert payload["status"] == {"start": "running", "progress": "running"}.get(
            kind, "complete"
        )


def test_a_filter_without_completed_hears_only_the_start(
    gateway: GatewayProcess, alice: dict[str, str], receiver: Receiver
) -> None:
    answer = queue(gateway, alice, steps=2, webhook=receiver.url, webhook_events_filter=["start"])
    job_id = answer.json()["id"]
    assert wait_done(gateway, alice, job_id)["status"] == "complete"
    wait_for(lambda: receiver.ids() == [f"{job_id}.start"])
    time.sleep(1.5)  # a completed delivery would have come by now (it is sent at the end)
    assert receiver.ids() == [f"{job_id}.start"]


def test_a_filter_with_an_unknown_event_is_a_400_and_one_without_a_webhook_changes_nothing(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    unknown = queue(gateway, alice, steps=1, webhook="http://127.0.0.1:9/h",
                    webhook_events_filter=["logs"])  # fmt: skip
    assert unknown.status_code == 400, unknown.text
    lonely = queue(gateway, alice, steps=1, webhook_events_filter=["completed"])
    assert lonely.status_code == 202, lonely.text
    assert wait_done(gateway, alice, lonely.json()["id"])["status"] == "complete"

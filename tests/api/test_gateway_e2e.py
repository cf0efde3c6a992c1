"""The gateway as a real process, in front of a real reference worker, driven over HTTP."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from support.gateway import (
    LOOPBACK_WEBHOOKS_CONFIG,
    GatewayProcess,
    start_gateway,
    stop_gateway,
    wait_done,
)
from support.processes import WorkerProcess
from support.worker_api import wait_idle

CONFIG = LOOPBACK_WEBHOOKS_CONFIG  # the receivers are on 127.0.0.1 over http


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("gateway"), CONFIG.format(worker=worker.url))
    yield process
    stop_gateway(process)


@pytest.fixture(scope="module")
def alice(gateway: GatewayProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.new_key('alice')}"}


@pytest.fixture(scope="module")
def bob(gateway: GatewayProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.new_key('bob')}"}


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker)


def job_body(**fields: Any) -> dict[str, Any]:
    return {
        "modality": "image",
        "family": "sd",
        "model": "tiny",
        "task": "t2i",
        "prompt": "a fox",
        **fields,
    }


def submit(gateway: GatewayProcess, headers: dict[str, str], **fields: Any) -> httpx.Response:
    return httpx.post(gateway.url + "/queue", json=job_body(**fields), headers=headers, timeout=30)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code and body["message"]
    assert (
        body["request_id"].startswith("req_")
        and body["request_id"] == response.headers["x-request-id"]
    )
    return body


def test_async_job_end_to_end(gateway: GatewayProcess, alice: dict[str, str]) -> None:
    response = submit(gateway, alice, seed=5)
    assert response.status_code == 202, response.text
    queued = response.json()
    assert response.headers["location"] == f"/jobs/{queued['id']}"
    assert response.headers["x-request-id"].startswith("req_")
    assert int(response.headers["x-ratelimit-remaining"]) >= 0
    assert queued["status"] == "queued" and queued["position"] == 0
    done = wait_done(gateway, alice, queued["id"])
    assert done["status"] == "complete" and done["progress"] == 1.0 and done["seed"] == 5
    assert done["retries"] == 0
    assert done["started_at"] and done["completed_at"] and done["error"] is None
    redirect = httpx.get(f"{gateway.url}/jobs/{queued['id']}/output", headers=alice)
    assert redirect.status_code == 303 and redirect.headers["location"] == done["output"]
    asset = httpx.get(gateway.url + done["output"])
    # A signed, expiring URL: cacheable by anyone until it expires (test_assets_e2e.py).
    assert asset.headers["cache-control"].startswith("public, max-age=")
    assert asset.headers["content-type"] == "image/png" and asset.headers["etag"]
    Image.open(io.BytesIO(asset.content)).verify()
    cached = httpx.get(
        gateway.url + done["output"], headers={"If-None-Match": asset.headers["etag"]}
    )
    assert cached.status_code == 304


def test_events_stream_real_progress_and_resume(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    job_id = submit(gateway, alice, steps=6).json()["id"]
    wait_done(gateway, alice, job_id)
    with httpx.stream(
        "GET", f"{gateway.url}/jobs/{job_id}/events", headers=alice, timeout=30
    ) as stream:
        lines = [line for line in stream.iter_lines() if line.startswith(("event:", "id:"))]
    events = [line[6:].strip() for line in lines if line.startswith("event:")]
    assert events == ["started"] + ["progress"] * 6 + ["complete"]
    resumed_headers = {**alice, "Last-Event-ID": "5"}
    with httpx.stream(
        "GET", f"{gateway.url}/jobs/{job_id}/events", headers=resumed_headers, timeout=30
    ) as stream:
        ids = [line[3:].strip() for line in stream.iter_lines() if line.startswith("id:")]
    assert ids == ["6", "7", "8"]


def test_a_customer_sees_and_cancels_only_its_own_jobs(
    gateway: GatewayProcess, alice: dict[str, str], bob: dict[str, str]
) -> None:
    job_id = submit(gateway, alice).json()["id"]
    wait_done(gateway, alice, job_id)
    assert_error(httpx.get(f"{gateway.url}/jobs/{job_id}", headers=bob), 404, "job_not_found")
    assert_error(httpx.delete(f"{gateway.url}/jobs/{job_id}", headers=bob), 404, "job_not_found")
    assert_error(
        httpx.get(f"{gateway.url}/jobs/{job_id}/output", headers=bob), 404, "job_not_found"
    )
    assert_error(
        httpx.get(f"{gateway.url}/jobs/{job_id}/events", headers=bob), 404, "job_not_found"
    )


def test_cancel_queued_and_running_jobs(gateway: GatewayProcess, alice: dict[str, str]) -> None:
    running = submit(gateway, alice, steps=500).json()["id"]
    queued = submit(gateway, alice, steps=4).json()["id"]
    deadline = time.monotonic() + 30
    while httpx.get(f"{gateway.url}/jobs/{running}", headers=alice).json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.get(f"{gateway.url}/jobs/{queued}", headers=alice).json()["position"] == 0
    assert httpx.delete(f"{gateway.url}/jobs/{queued}", headers=alice).status_code == 204
    assert httpx.get(f"{gateway.url}/jobs/{queued}", headers=alice).json()["status"] == "cancelled"
    assert httpx.delete(f"{gateway.url}/jobs/{running}", headers=alice).status_code == 204
    final = wait_done(gateway, alice, running)
    assert final["status"] == "cancelled"
    assert 0 < final["progress"] < 1
    assert_error(httpx.delete(f"{gateway.url}/jobs/{running}", headers=alice), 409, "job_finished")
    assert_error(
        httpx.get(f"{gateway.url}/jobs/{running}/output", headers=alice), 409, "not_complete"
    )


def test_idempotency_keys(
    gateway: GatewayProcess, alice: dict[str, str], bob: dict[str, str]
) -> None:
    first = submit(gateway, alice, idempotency_key="order-1").json()["id"]
    again = submit(gateway, alice, idempotency_key="order-1").json()["id"]
    assert again == first
    conflict = assert_error(
        submit(gateway, alice, idempotency_key="order-1", seed=9), 409, "idempotency_conflict"
    )
    assert conflict["details"]["job_id"] == first
    assert submit(gateway, bob, idempotency_key="order-1").json()["id"] != first  # per customer
    wait_done(gateway, alice, first)


def test_priority_needs_a_plan_that_allows_it(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    assert_error(submit(gateway, alice, priority="high"), 403, "priority_not_allowed")
    admin = {"Authorization": f"Bearer {gateway.admin_key}"}
    job_id = submit(gateway, admin, priority="high").json()["id"]
    wait_done(gateway, admin, job_id)


def test_sync_tier_returns_bytes_and_headers(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    response = httpx.post(
        f"{gateway.url}/image/sd/tiny/t2i",
        json={"prompt": "a fox", "seed": 4},
        headers=alice,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "4" and float(response.headers["x-gpu-seconds"]) > 0
    assert int(response.headers["x-duration-ms"]) >= 0
    Image.open(io.BytesIO(response.content)).verify()
    asset = httpx.get(gateway.url + response.headers["content-location"])
    assert asset.content == response.content
    by_alias = httpx.post(
        f"{gateway.url}/image/render/tiny-sd-demo/t2i",
        json={"prompt": "a fox", "seed": 4},
        headers=alice,
        timeout=60,
    )
    assert by_alias.status_code == 200 and by_alias.content == response.content


def test_sync_tier_answers_503_when_no_slot_is_free(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    long_job = submit(gateway, alice, steps=500).json()["id"]
    deadline = time.monotonic() + 30
    while httpx.get(f"{gateway.url}/jobs/{long_job}", headers=alice).json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    busy = httpx.post(
        f"{gateway.url}/image/sd/tiny/t2i", json={"prompt": "x"}, headers=alice, timeout=30
    )
    assert_error(busy, 503, "no_capacity")
    assert busy.headers["retry-after"] == "1"
    httpx.delete(f"{gateway.url}/jobs/{long_job}", headers=alice)
    wait_done(gateway, alice, long_job)


def test_sync_client_hanging_up_cancels_the_run(
    gateway: GatewayProcess, alice: dict[str, str], worker: WorkerProcess
) -> None:
    from support.worker_api import stats

    before = stats(worker)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.url}/image/sd/tiny/t2i",
            json={"prompt": "long", "steps": 500},
            headers=alice,
            timeout=httpx.Timeout(10, read=1.0),
        )
    after = wait_idle(worker)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["steps_executed"] - before["steps_executed"] < 500
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'render_backend_in_flight{backend="w1"} 0.0' in metrics


def test_webhook_is_signed_and_sent_on_completion(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from render_gateway.application.webhooks import WebhookSecret, verify

    received: list[tuple[dict[str, str], bytes]] = []
    arrived = threading.Event()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()
            arrived.set()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        job_id = submit(gateway, alice, webhook=url).json()["id"]
        assert arrived.wait(60), "no webhook arrived"
        headers, body = received[0]
        secret = WebhookSecret.parse((gateway.data_dir / "webhook_secret").read_text())
        assert verify(secret, headers, body, time.time())
        assert headers["webhook-id"] == f"{job_id}.complete"
        payload = orjson.loads(body)
        assert payload["id"] == job_id and payload["status"] == "complete" and payload["output"]
        assert not verify(secret, headers, body.replace(b"complete", b"errored!"), time.time())
    finally:
        server.shutdown()
    assert 'render_webhooks{outcome="delivered"} 1.0' in httpx.get(gateway.url + "/metrics").text


def test_credentials_are_verified(gateway: GatewayProcess) -> None:
    url = gateway.url + "/queue"
    assert_error(httpx.post(url, json=job_body()), 401, "missing_credentials")
    assert_error(
        httpx.post(url, json=job_body(), headers={"Authorization": "Bearer rk_" + "x" * 40}),
        401,
        "invalid_api_key",
    )
    assert_error(
        httpx.post(url, json=job_body(), headers={"Authorization": "Basic abc"}),
        401,
        "invalid_authorization",
    )
    none_token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9."
    refused = httpx.post(url, json=job_body(), headers={"Authorization": f"Bearer {none_token}"})
    assert refused.status_code == 401
    secret = gateway.new_key("carol")
    key_id = gateway.cli("keys", "list")
    assert "carol" in key_id
    listed = next(line for line in key_id.splitlines() if "carol" in line)
    carol_key_id = next(
        part for part in listed.replace("│", " ").split() if part.startswith("key_")
    )
    # Verified once (so the gateway holds it as verified), then revoked by another process.
    assert (
        httpx.get(f"{gateway.url}/me", headers={"Authorization": f"Bearer {secret}"}).json()[
            "customer_id"
        ]
        == "carol"
    )
    gateway.cli("keys", "revoke", carol_key_id)
    assert_error(
        httpx.post(url, json=job_body(), headers={"Authorization": f"Bearer {secret}"}),
        401,
        "revoked_api_key",
    )


BAD_BODIES: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "missing prompt",
        {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i"},
        400,
        "invalid_request",
    ),
    ("prompt too long", job_body(prompt="x" * 4001), 400, "invalid_request"),
    ("unknown model", job_body(model="huge"), 404, "model_not_found"),
    ("unknown modality", job_body(modality="audio"), 400, "invalid_request"),
    ("task mismatch", job_body(task="i2i"), 400, "invalid_request"),
    ("video task on image model", job_body(task="t2v"), 404, "model_not_found"),
    ("bad priority", job_body(priority="urgent"), 400, "invalid_request"),
    ("ttl too short", job_body(ttl=5), 400, "invalid_request"),
    ("idempotency key too long", job_body(idempotency_key="k" * 65), 400, "invalid_request"),
    ("unknown backend type", job_body(backend="tensorrt"), 404, "backend_not_found"),
]


@pytest.mark.parametrize(
    ("name", "body", "status", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
def test_bad_input_gets_a_json_error(
    gateway: GatewayProcess,
    alice: dict[str, str],
    name: str,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    assert_error(httpx.post(gateway.url + "/queue", json=body, headers=alice), status, code)


def test_malformed_and_oversized_bodies(gateway: GatewayProcess, alice: dict[str, str]) -> None:
    headers = {**alice, "Content-Type": "application/json"}
    assert_error(
        httpx.post(gateway.url + "/queue", content=b"{not json", headers=headers),
        400,
        "invalid_request",
    )
    big = orjson.dumps(job_body(extra="x" * (11 * 1024 * 1024)))
    assert_error(
        httpx.post(gateway.url + "/queue", content=big, headers=headers), 413, "payload_too_large"
    )
    assert_error(httpx.get(gateway.url + "/jobs/not-an-id", headers=alice), 404, "job_not_found")
    assert_error(httpx.get(gateway.url + "/assets/a_123"), 404, "asset_not_found")
    assert_error(httpx.get(gateway.url + "/nowhere"), 404, "not_found")
    as_form = {**alice, "Content-Type": "application/x-www-form-urlencoded"}
    wrong_type = assert_error(
        httpx.post(gateway.url + "/queue", content=orjson.dumps(job_body()), headers=as_form),
        400,
        "invalid_request",
    )
    assert "Content-Type: application/json" in wrong_type["message"]


def test_catalog_health_metrics_and_openapi(gateway: GatewayProcess) -> None:
    models = httpx.get(gateway.url + "/models").json()
    assert models["image"][0]["model"] == "tiny" and models["video"] == []
    assert httpx.get(gateway.url + "/models/aliases").json() == {
        "render/tiny-sd-demo": {"modality": "image", "family": "sd", "model": "tiny"}
    }
    assert httpx.get(gateway.url + "/health").json() == {"status": "ok"}
    assert httpx.get(gateway.url + "/ready").json()["backends"] == {"w1": True}
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'render_jobs{status="complete"}' in metrics
    for name in ("render_queue_depth", "render_backend_in_flight", "render_backend_breaker_state",
                 "render_http_request_seconds_bucket"):  # fmt: skip
        assert name in metrics
    spec = httpx.get(gateway.url + "/openapi.json").json()
    assert spec["openapi"].startswith("3.1") and "/queue" in spec["paths"]


def test_kill_9_keeps_every_acknowledged_job_in_order(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Jobs acknowledged with a 202 survive a kill -9 of the gateway, in the same order; a job
    that was running is queued again with its retry count raised."""
    import os
    import signal

    data_dir = tmp_path_factory.mktemp("gateway-kill")
    config = CONFIG.format(worker=worker.url)
    first = start_gateway(data_dir, config)
    admin = {"Authorization": f"Bearer {first.admin_key}"}
    running = submit(first, admin, steps=500).json()["id"]
    deadline = time.monotonic() + 30
    while httpx.get(f"{first.url}/jobs/{running}", headers=admin).json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lanes = ["low", "normal", "high"] * 10
    acknowledged = []
    for priority in lanes:
        response = submit(first, admin, priority=priority, steps=1)
        assert response.status_code == 202
        acknowledged.append((response.json()["id"], priority))
    positions_before = {
        job_id: httpx.get(f"{first.url}/jobs/{job_id}", headers=admin).json()["position"]
        for job_id, _ in acknowledged
    }
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    wait_idle(worker)  # the orphaned run ends when its connection drops

    second = start_gateway(data_dir, config)
    try:
        assert second.admin_key == ""  # the first key is created once, never again
        recovered = httpx.get(f"{second.url}/jobs/{running}", headers=admin).json()
        assert recovered["status"] in ("queued", "running", "complete")
        for job_id, _ in acknowledged:
            body = httpx.get(f"{second.url}/jobs/{job_id}", headers=admin).json()
            assert body["id"] == job_id  # nothing acknowledged was lost
        # Everything finishes; the order of completion follows the lanes.
        finished = [wait_done(second, admin, job_id) for job_id, _ in acknowledged]
        assert all(f["status"] == "complete" for f in finished)
        by_start = sorted(acknowledged, key=lambda item: positions_before[item[0]])
        starts = [
            httpx.get(f"{second.url}/jobs/{job_id}", headers=admin).json()["started_at"]
            for job_id, _ in by_start
        ]
        assert starts == sorted(starts)
    finally:
        stop_gateway(second)


def test_serve_with_no_backend_starts_the_demo_worker(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """What `make run` does on a fresh machine: no config, a local demo worker, an image."""
    gateway = start_gateway(tmp_path_factory.mktemp("fresh"), "")
    try:
        assert gateway.admin_key.startswith("rk_")
        auth = {"Authorization": f"Bearer {gateway.admin_key}"}
        response = httpx.post(
            f"{gateway.url}/image/sd/tiny/t2i",
            json={"prompt": "a lighthouse", "seed": 42},
            headers=auth,
            timeout=120,
        )
        assert response.status_code == 200, response.text
        image = Image.open(io.BytesIO(response.content))
        assert image.format == "PNG" and image.size == (
            512,
            512,
        )  # the demo catalog's default format
    finally:
        stop_gateway(gateway)


def test_a_job_whose_backend_was_removed_fails_without_blocking_the_queue(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data_dir = tmp_path_factory.mktemp("gateway-removed")
    two_models = (
        CONFIG.format(worker=worker.url)
        + """
[[gateway.backends]]
id = "gone"
endpoint = "http://127.0.0.1:9"
family = "old"
models = { legacy = "demo" }

[[gateway.models]]
modality = "image"
family = "old"
model = "legacy"
tasks = ["t2i"]
"""
    )
    first = start_gateway(data_dir, two_models)
    admin = {"Authorization": f"Bearer {first.admin_key}"}
    # The "gone" backend never passes its probe, so its job waits at the head of the queue.
    stuck = httpx.post(
        first.url + "/queue", json=job_body(family="old", model="legacy"), headers=admin
    ).json()["id"]
    later = submit(first, admin).json()["id"]
    assert httpx.get(f"{first.url}/jobs/{later}", headers=admin).json()["position"] == 1
    stop_gateway(first)
    second = start_gateway(data_dir, CONFIG.format(worker=worker.url))  # "old/legacy" removed
    try:
        failed = wait_done(second, admin, stuck)
        assert failed["status"] == "error" and failed["error"]["code"] == "backend_not_found"
        assert wait_done(second, admin, later)["status"] == "complete"
    finally:
        stop_gateway(second)

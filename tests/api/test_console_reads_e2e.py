"""The operator console's reads through a real gateway, the session's reference worker and a
backend that fails every request (``support/failing_backend.py``): the backends with their
health, breaker, node key, device and latest failures; the audit log's status and the gateway's
own verification of it (clean, then after a stored batch is altered); a job's usage records
for its customer only; series that sum to GET /usage; errors by code on the dashboard."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from render_gateway.signing_keys import key_id

from support.gateway import GatewayProcess, bearer, start_gateway, stop_gateway, wait_done
from support.processes import WorkerProcess, free_port, stop_process, wait_until_ready
from support.worker_api import wait_idle

CONFIG = """
[gateway]
local_demo_worker = false

[gateway.retry]
max_attempts = 1

# Two failures in a row open the broken backend's breaker, for long enough to see it.
[gateway.breaker]
minimum_calls = 2
window_seconds = 600
open_seconds = 600

[gateway.metering]
flush_interval_seconds = 0.2

[gateway.audit]
batch_records = 3
batch_seconds = 0.3

[[gateway.backends]]
id = "w1"
endpoint = "{worker}"
family = "sd"
models = {{ tiny = "demo" }}
capacity = 1

[[gateway.backends]]
id = "broken"
endpoint = "{broken}"
family = "broken"
models = {{ boom = "boom" }}
capacity = 2
streaming = false

[[gateway.models]]
modality = "image"
family = "sd"
model = "tiny"
tasks = ["t2i"]

[[gateway.models]]
modality = "image"
family = "broken"
model = "boom"
tasks = ["t2i"]
"""
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def broken_backend() -> Iterator[str]:
    port = free_port()
    script = Path(__file__).resolve().parents[1] / "support" / "failing_backend.py"
    process = subprocess.Popen([sys.executable, str(script), str(port)])
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(process, url + "/v2/health/ready", None, 30)
    yield url
    stop_process(process)


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, broken_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = CONFIG.format(worker=worker.url, broken=broken_backend)
    process = start_gateway(tmp_path_factory.mktemp("console"), config)
    yield process
    stop_gateway(process)


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker)


def run(gateway: GatewayProcess, headers: dict[str, str], model: str, seed: int) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/image/{model}/t2i", headers=headers, timeout=60,
        json={"prompt": "a fox", "seed": seed, **SMALL},
    )  # fmt: skip


def queued(gateway: GatewayProcess, headers: dict[str, str], seed: int) -> dict[str, Any]:
    body = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
            "prompt": "a fox", "seed": seed, **SMALL}  # fmt: skip
    response = httpx.post(f"{gateway.url}/queue", json=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    return wait_done(gateway, headers, response.json()["id"])


def get(gateway: GatewayProcess, path: str, headers: dict[str, str], **params: Any) -> Any:
    response = httpx.get(f"{gateway.url}{path}", headers=headers, params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def eventually(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["message"] and "request_id" in body, body


def test_backends_show_health_node_key_device_and_latest_failures(
    gateway: GatewayProcess,
) -> None:
    alice = bearer(gateway.new_key("alice"))
    admin = bearer(gateway.admin_key)
    assert run(gateway, alice, "sd/tiny", 1).status_code == 200
    for seed in (2, 3):
        failed = run(gateway, alice, "broken/boom", seed)
        assert failed.status_code >= 500, failed.text
    failed_request = failed.headers["x-request-id"]

    def listed() -> dict[str, dict[str, Any]]:
        body = get(gateway, "/backends", admin)
        assert "usage_unavailable" not in body
        return {b["id"]: b for b in body["backends"]}

    # Both failures reach the hot path through the usage stream's batcher, in their own time.
    backends = eventually(
        listed, lambda b: b["w1"]["device_uuid"] and len(b["broken"]["recent_failures"]) == 2
    )
    w1, broken = backends["w1"], backends["broken"]
    assert w1["healthy"] and w1["family"] == "sd" and w1["models"] == ["tiny"]
    assert (w1["type"], w1["protocol"], w1["capacity"]) == ("torch", "http", 1)
    assert w1["served"] >= 1 and w1["failed"] == 0 and w1["in_flight"] == 0
    assert w1["breaker"] == {"state": "closed", "failures": 0, "calls": w1["breaker"]["calls"],
                             "opened_at": None}  # fmt: skip
    assert w1["recent_failures"] == [] and w1["device_uuid"]
    # The key the worker signed alice's claim with, as the usage log recorded it.
    (claimed,) = {r["node_public_key"] for r in gateway.usage_records() if r["node_public_key"]}
    raw = base64.b64decode(claimed)
    assert w1["node_key_id"] == key_id(Ed25519PublicKey.from_public_bytes(raw))
    assert broken["healthy"] and broken["node_key_id"] is None and broken["device_uuid"] is None
    assert broken["failed"] == 2 and broken["served"] == 0
    assert broken["breaker"]["state"] == "open"
    opened_at = datetime.fromisoformat(broken["breaker"]["opened_at"])
    assert abs(opened_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert len(broken["recent_failures"]) == 2
    latest = broken["recent_failures"][0]
    assert latest["request_id"] == failed_request and latest["job_id"] is None
    assert latest["error_code"] and datetime.fromisoformat(latest["at"]) > datetime.now(
        UTC
    ) - timedelta(minutes=5)
    assert_error(httpx.get(f"{gateway.url}/backends", headers=alice), 403, "forbidden")
    assert httpx.get(f"{gateway.url}/backends").status_code == 401


def test_a_jobs_records_are_its_customers_only(gateway: GatewayProcess) -> None:
    carol, dave = bearer(gateway.new_key("carol")), bearer(gateway.new_key("dave"))
    job = queued(gateway, carol, 3)
    assert job["status"] == "complete"

    def records(headers: dict[str, str], **params: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = get(gateway, "/usage/records", headers, **params)["records"]
        return found

    (mine,) = eventually(lambda: records(carol, job_id=job["id"]), bool)
    assert mine["job_id"] == job["id"] and mine["customer_id"] == "carol"
    assert (mine["status"], mine["error_code"], mine["backend"]) == ("success", None, "w1")
    assert mine["model_name"] == "image/sd/tiny" and mine["device_uuid"]
    assert mine["gpu_seconds"] == pytest.approx(job["usage"]["gpu_seconds"])
    assert mine["cost"] == pytest.approx(job["usage"]["cost"]) and mine["currency"] == "USD"
    assert mine["metered"] and mine["billable"]
    assert 0 <= mine["queue_time_ms"] <= mine["total_time_ms"]
    assert 0 < mine["inference_time_ms"] <= mine["total_time_ms"]
    assert datetime.fromisoformat(mine["timestamp"]).tzinfo is not None
    assert records(carol, request_id=mine["request_id"]) == [mine]
    assert records(dave, job_id=job["id"]) == []  # another customer's: none, not an error
    assert records(dave, request_id=mine["request_id"]) == []
    assert records(bearer(gateway.admin_key), job_id=job["id"]) == [mine]
    for params in ({}, {"job_id": job["id"], "request_id": mine["request_id"]}, {"job_id": ""}):
        response = httpx.get(f"{gateway.url}/usage/records", headers=carol, params=params)
        assert_error(response, 400, "invalid_request")


def test_series_sum_to_the_usage_of_the_same_range(gateway: GatewayProcess) -> None:
    erin = bearer(gateway.new_key("erin"))
    admin = bearer(gateway.admin_key)
    for seed in range(3):
        assert run(gateway, erin, "sd/tiny", 10 + seed).status_code == 200
    today = datetime.now(UTC).date()
    window = {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))}
    usage = eventually(
        lambda: get(gateway, "/usage", admin, customer_id="erin", group_by="", **window),
        lambda u: u["totals"]["requests"] >= 3,
    )
    totals = usage["totals"]
    body = get(gateway, "/usage/series", admin, customer_id="erin", **window)
    assert (body["bucket"], body["group_by"]) == ("hour", "none")
    (series,) = body["series"]
    assert series["key"] == "all"
    points = series["points"]
    assert sum(p["requests"] for p in points) == totals["requests"] == 3
    assert sum(p["errors"] for p in points) == 0
    assert sum(p["cost"] for p in points) == pytest.approx(totals["cost"])
    assert sum(p["gpu_seconds"] for p in points) == pytest.approx(totals["gpu_seconds"], abs=1e-5)
    by_customer = get(gateway, "/usage/series", admin, group_by="customer", bucket="day", **window)
    (erins,) = [s for s in by_customer["series"] if s["key"] == "erin"]
    assert sum(p["requests"] for p in erins["points"]) == 3
    by_model = get(gateway, "/usage/series", admin, group_by="model", **window)
    assert {"image/sd/tiny", "image/broken/boom"} <= {s["key"] for s in by_model["series"]}
    # The first test's two failures on the broken backend, by their code.
    board = get(gateway, "/usage/dashboard", admin, **window)
    (boom,) = [e for e in board["errors_by_code"] if e["model_name"] == "image/broken/boom"]
    assert boom["count"] == 2 and boom["error_code"]
    mine = get(gateway, "/usage/dashboard", admin, customer_id="erin", **window)
    assert mine["errors_by_code"] == []
    month = {"from": str(today - timedelta(days=30)), "to": str(today + timedelta(days=1))}
    wrong = [
        {"bucket": "week"},
        {"group_by": "plan"},
        {"from": "yesterday"},
        {"from": window["to"], "to": window["from"]},
        {"bucket": "minute", **month},
    ]
    for params in wrong:
        response = httpx.get(f"{gateway.url}/usage/series", headers=admin, params=params)
        assert_error(response, 400, "invalid_request")
    assert_error(httpx.get(f"{gateway.url}/usage/series", headers=erin), 403, "forbidden")


def test_audit_status_and_a_verification_of_the_clean_log(gateway: GatewayProcess) -> None:
    frank = bearer(gateway.new_key("frank"))
    admin = bearer(gateway.admin_key)
    for seed in range(3):
        assert run(gateway, frank, "sd/tiny", 20 + seed).status_code == 200
    status = eventually(
        lambda: get(gateway, "/audit/status", frank),
        lambda s: s["checkpoint"] is not None and s["pending_records"] == 0,
    )
    checkpoint = status["checkpoint"]
    assert checkpoint["signature_ok"] is True
    assert status["log_public_key"] == gateway.cli("audit", "pubkey").strip()
    assert checkpoint["size"] == status["log_size"] >= 1
    assert status["attested_since_start"] >= 3
    assert len(base64.b64decode(checkpoint["root_hash"])) == 32
    origin, size, root = checkpoint["note"].split("\n")[:3]
    assert (origin, int(size), root) == (checkpoint["origin"], checkpoint["size"],
                                         checkpoint["root_hash"])  # fmt: skip
    assert_error(httpx.post(f"{gateway.url}/audit/verifications", headers=frank), 403, "forbidden")
    response = httpx.post(f"{gateway.url}/audit/verifications", headers=admin, timeout=120)
    assert response.status_code == 200, response.text
    verified = response.json()
    assert verified["ok"] is True and verified["findings"] == [], verified
    assert verified["batches"] >= 1 and verified["records"] >= 3 and verified["gpu_seconds"] > 0
    assert verified["id"].startswith("ver_")
    assert datetime.fromisoformat(verified["started_at"]) <= datetime.fromisoformat(
        verified["finished_at"]
    )
    runs = get(gateway, "/audit/verifications", admin, limit=5)["runs"]
    assert runs[0] == verified
    assert get(gateway, "/audit/status", frank)["last_verification"] == verified
    stored = list((gateway.data_dir / "cas" / "verifications").iterdir())
    assert [orjson.loads(p.read_bytes())["id"] for p in stored] == [verified["id"]]
    # The recorded run changes nothing the offline verifier reads.
    offline = orjson.loads(gateway.cli("audit", "verify", "--json"))
    assert offline["ok"], offline["findings"]
    assert_error(httpx.get(f"{gateway.url}/audit/verifications", headers=frank), 403, "forbidden")
    response = httpx.get(f"{gateway.url}/audit/verifications", headers=admin, params={"limit": 0})
    assert_error(response, 400, "invalid_request")


def test_a_verification_after_a_batch_is_altered_names_the_batch(gateway: GatewayProcess) -> None:
    """Last in the module: it leaves the log tampered with."""
    admin = bearer(gateway.admin_key)
    cas = gateway.data_dir / "cas"
    leaf = orjson.loads((cas / "log" / "leaves" / f"{0:020d}").read_bytes())
    digest = leaf["batch_blake3"]
    blob = cas / "blobs" / digest[:2] / digest
    os.chmod(blob, blob.stat().st_mode | stat.S_IWUSR)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    response = httpx.post(f"{gateway.url}/audit/verifications", headers=admin, timeout=120)
    assert response.status_code == 200, response.text
    verified = response.json()
    assert verified["ok"] is False and verified["findings_total"] >= 1
    where = f"leaf 0 (batch {digest[:16]}…)"
    assert {"where": where, "what": "the batch's bytes do not match its hash (altered)"} in (
        verified["findings"]
    )
    runs = get(gateway, "/audit/verifications", admin)["runs"]
    assert runs[0]["id"] == verified["id"] and runs[0]["ok"] is False and runs[1]["ok"] is True

"""The cold path through a real gateway and a real worker: every request's attestation, with
the worker's signed claim checked against the node key the gateway learned from /v2/node, is in
the log; customers get inclusion proofs of their own requests only; the log verifies offline."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from support.gateway import ONE_WORKER_CONFIG, GatewayProcess, bearer, start_gateway, stop_gateway
from support.processes import CLI, WorkerProcess
from support.worker_api import wait_idle

CONFIG = (
    ONE_WORKER_CONFIG
    + """
[gateway.audit]
batch_records = 3
batch_seconds = 0.3

[gateway.reconcile]
interval_seconds = 10
lateness_seconds = 2
"""
)
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("audit"), CONFIG.format(worker=worker.url))
    yield process
    stop_gateway(process)


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker)


def proof_when_sealed(gateway: GatewayProcess, headers: dict[str, str], request_id: str) -> bytes:
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(f"{gateway.url}/audit/proofs/{request_id}", headers=headers)
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response.content
        assert response.json()["error"] == "proof_not_found"
        time.sleep(0.1)


def test_requests_are_attested_proved_and_verified_offline(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    grace = bearer(gateway.new_key("grace"))
    request_ids = []
    for seed in range(4):
        response = httpx.post(
            f"{gateway.url}/image/sd/tiny/t2i", headers=grace, timeout=60,
            json={"prompt": "a fox", "seed": seed, **SMALL},
        )  # fmt: skip
        assert response.status_code == 200
        request_ids.append(response.headers["x-request-id"])
    queued = httpx.post(
        f"{gateway.url}/queue", headers=grace, timeout=30,
        json={"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
              "prompt": "a fox", **SMALL},
    )  # fmt: skip
    assert queued.status_code == 202
    request_ids.append(queued.headers["x-request-id"])
    pubkey = tmp_path / "pubkey.txt"
    pubkey.write_text(gateway.cli("audit", "pubkey"))
    for request_id in request_ids:
        bundle = tmp_path / f"{request_id}.json"
        bundle.write_bytes(proof_when_sealed(gateway, grace, request_id))
        checked = subprocess.run(
            [*CLI, "audit", "verify-proof", str(bundle), "--pubkey", str(pubkey)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stderr
        assert f"verified: request {request_id} (grace, image/sd/tiny" in checked.stdout
        row = orjson.loads(orjson.loads(bundle.read_bytes())["row"])
        assert row["claim_payload"] and row["node_public_key"]  # the worker's claim, checkable
    henry = bearer(gateway.new_key("henry"))
    refused = httpx.get(f"{gateway.url}/audit/proofs/{request_ids[0]}", headers=henry)
    assert refused.status_code == 404 and refused.json()["error"] == "proof_not_found"
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert "render_audit_log_size" in metrics and "render_audit_errors_total 0.0" in metrics
    report = orjson.loads(gateway.cli("audit", "verify", "--pubkey", str(pubkey), "--json"))
    assert report["ok"], report["findings"]
    assert report["records"] >= 5 and report["records_without_claim"] == 0


def test_admins_reconcile_over_http_and_the_cli(gateway: GatewayProcess) -> None:
    ivan = bearer(gateway.new_key("ivan"))
    response = httpx.post(
        f"{gateway.url}/image/sd/tiny/t2i", headers=ivan, timeout=60,
        json={"prompt": "a fox", "seed": 1, **SMALL},
    )  # fmt: skip
    proof_when_sealed(gateway, ivan, response.headers["x-request-id"])
    admin = bearer(gateway.admin_key)
    today = datetime.now(UTC).date()
    window = {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=2))}
    refused = httpx.post(f"{gateway.url}/reconciliations", headers=ivan, json=window)
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    deadline = time.monotonic() + 30
    while True:  # the hot path is fed within about a second
        run = httpx.post(f"{gateway.url}/reconciliations", headers=admin, json=window, timeout=60)
        assert run.status_code == 200, run.text
        if run.json()["status"] == "reconciled" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    report = run.json()
    assert report["status"] == "reconciled", report
    assert report["hot_requests"] == report["cold_requests"] >= 1
    listed = httpx.get(f"{gateway.url}/reconciliations", headers=admin).json()
    assert listed["runs"][0]["run_id"] == report["run_id"]
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'render_reconcile_last_status{status="reconciled"} 1.0' in metrics
    over_http = subprocess.run(
        [*CLI, "reconcile", "--from", window["from"], "--to", window["to"], "--json",
         "--api-key", gateway.admin_key, "--url", gateway.url,
         "--config", str(gateway.config_path), "--data-dir", str(gateway.data_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert over_http.returncode == 0, over_http.stdout + over_http.stderr
    assert orjson.loads(over_http.stdout)["status"] == "reconciled"

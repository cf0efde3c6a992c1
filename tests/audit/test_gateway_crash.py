"""A `kill -9` of the gateway must not leave the audit log failing: records written before the
crash are sealed after the restart with the node key they were verified with when they
settled (the restarted batcher seals them before the backend probe has learned any key)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import orjson

from support.gateway import ONE_WORKER_CONFIG, start_gateway, stop_gateway
from support.processes import CLI, WorkerProcess

# Long enough that the first gateway never seals the record itself; the wait after the kill
# makes it due the moment the second gateway's batcher starts.
BATCH_SECONDS = 30
CONFIG = ONE_WORKER_CONFIG + f"\n[gateway.audit]\nbatch_seconds = {BATCH_SECONDS}\n"
SMALL = {"width": 64, "height": 64, "steps": 2}


def test_records_left_by_a_kill_are_sealed_with_their_node_key(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    config = CONFIG.format(worker=worker.url)
    first = start_gateway(tmp_path, config)
    response = httpx.post(
        f"{first.url}/image/sd/tiny/t2i", timeout=60,
        headers={"Authorization": f"Bearer {first.new_key('acme')}"},
        json={"prompt": "a fox", "seed": 3, **SMALL},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    first.process.kill()
    first.process.wait()
    time.sleep(BATCH_SECONDS + 2)
    second = start_gateway(tmp_path, config)
    stop_gateway(second)  # sealed at the latest on the way out

    pubkey = tmp_path / "pubkey.txt"
    pubkey.write_text(second.cli("audit", "pubkey"))
    verified = subprocess.run(
        [*CLI, "audit", "verify", "--pubkey", str(pubkey), "--json",
         "--config", str(second.config_path), "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = orjson.loads(verified.stdout)
    assert report["records"] == 1 and report["records_without_claim"] == 0

    bundle = tmp_path / "proof.json"
    second.cli("audit", "prove", request_id, "--out", str(bundle))
    row = orjson.loads(orjson.loads(bundle.read_bytes())["row"])
    assert row["node_public_key"] and row["claim_payload"]
    checked = subprocess.run(
        [*CLI, "audit", "verify-proof", str(bundle), "--pubkey", str(pubkey)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"verified: request {request_id}" in checked.stdout

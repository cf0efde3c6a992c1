"""A real gateway in front of Render's worker over gRPC (``--grpc-port``): progress over
ModelStreamInfer, the signed claim checked with the key read from the worker's ``node_url``,
and a cancel that stops the run (the RPC's cancellation is the cancel)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support.gateway import GatewayProcess, bearer, start_gateway, stop_gateway, wait_done
from support.worker_api import GrpcWorker, stats, wait_idle

CONFIG = """
[gateway]
local_demo_worker = false

[[gateway.backends]]
id = "worker-grpc"
endpoint = "grpc://{grpc}"
node_url = "{http}"
family = "sd"
models = {{ tiny = "demo" }}

[[gateway.models]]
modality = "image"
family = "sd"
model = "tiny"
tasks = ["t2i"]
default_format = "512"
"""


@pytest.fixture(scope="module")
def gateway(
    grpc_worker: GrpcWorker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = CONFIG.format(grpc=grpc_worker.grpc_address, http=grpc_worker.url)
    process = start_gateway(tmp_path_factory.mktemp("grpc-worker-gw"), config)
    yield process
    stop_gateway(process)


def records(gateway: GatewayProcess) -> list[dict[str, Any]]:
    return gateway.usage_records()


def test_sync_over_grpc_checks_the_workers_claim(
    gateway: GatewayProcess, grpc_worker: GrpcWorker
) -> None:
    answer = httpx.post(
        f"{gateway.url}/image/sd/tiny/t2i",
        json={"prompt": "a harbour", "steps": 2, "seed": 3},
        headers=bearer(gateway.admin_key),
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert answer.content[:8] == b"\x89PNG\r\n\x1a\n" and answer.headers["x-metered"] == "true"
    request_id = answer.headers["x-request-id"]
    (record,) = [r for r in records(gateway) if r["request_id"] == request_id]
    assert record["usage_claim"] and record["claim_error"] is None
    assert record["node_public_key"]  # checked with the key read from node_url
    # The operators' view names the protocol and the key it was checked with.
    listed = httpx.get(f"{gateway.url}/backends", headers=bearer(gateway.admin_key), timeout=30)
    (backend,) = listed.json()["backends"]
    assert (backend["id"], backend["protocol"], backend["healthy"]) == ("worker-grpc", "grpc", True)
    assert backend["node_key_id"] and backend["served"] == 1
    wait_idle(grpc_worker.process)


def test_a_job_cancelled_over_grpc_stops_the_run(
    gateway: GatewayProcess, grpc_worker: GrpcWorker
) -> None:
    admin = bearer(gateway.admin_key)
    before = stats(grpc_worker.process)["cancelled"]
    fields = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i"}
    submitted = httpx.post(
        f"{gateway.url}/queue",
        json={**fields, "prompt": "a long one", "steps": 400, "format": None},
        headers=admin,
        timeout=30,
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 60
    while httpx.get(f"{gateway.url}/jobs/{job_id}", headers=admin).json()["progress"] == 0:
        assert time.monotonic() < deadline, "no progress reached the job"
        time.sleep(0.05)
    assert httpx.delete(f"{gateway.url}/jobs/{job_id}", headers=admin).status_code == 204
    job = wait_done(gateway, admin, job_id)
    assert job["status"] == "cancelled"
    idle = wait_idle(grpc_worker.process)
    assert idle["cancelled"] == before + 1

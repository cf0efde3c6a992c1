"""Two gateway processes, each with its own data dir, on one real redis-server through
``[gateway.shared] url``: what they share today is attacked from outside — an API key made
through one is accepted by the other, one rate-limit bucket spans both, a revocation through one
is refused by the other at once, and budget holds made on one are seen by the other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.gateway import (
    ONE_WORKER_CONFIG,
    GatewayProcess,
    bearer,
    start_gateway,
    stop_gateway,
    wait_done,
)
from support.processes import WorkerProcess
from support.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]

SHARED = """
drain_seconds = 1

[gateway.shared]
url = "{redis}"

[gateway.plans.default]
rate_capacity = 3
rate_refill_per_second = 0.001
monthly_gpu_seconds = 1000

[gateway.plans.admin]
rate_capacity = 1000
rate_refill_per_second = 100
admin = true
allow_high_priority = true
"""
BODY = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": "a fox",
        "steps": 2, "width": 64, "height": 64}  # fmt: skip


def config(worker: WorkerProcess, redis: RedisServer) -> str:
    base = ONE_WORKER_CONFIG.format(worker=worker.url)
    head, rest = base.split("\n[[gateway.backends]]", 1)
    return head + SHARED.format(redis=redis.url) + "\n[[gateway.backends]]" + rest


@pytest.fixture
def gateways(
    worker: WorkerProcess, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    text = config(worker, redis_server)
    first = start_gateway(tmp_path / "a", text)
    try:
        second = start_gateway(tmp_path / "b", text)
    except BaseException:
        stop_gateway(first)
        raise
    try:
        yield first, second
    finally:
        stop_gateway(second)
        stop_gateway(first)


def test_two_gateways_share_keys_one_bucket_and_revocations(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = gateways
    assert a.admin_key.startswith("rk_")
    assert b.admin_key == ""  # the keys already existed in the shared store: none printed
    assert httpx.get(b.url + "/usage", headers=bearer(a.admin_key)).status_code == 200
    created = a.cli("keys", "create", "--customer", "shared-customer").strip().splitlines()
    key_id, key = created[-2].split()[1], created[-1]  # "key <id> for customer …", the secret
    headers = bearer(key)
    codes = []
    job_ids = []
    for gateway in (a, b, a, b):
        response = httpx.post(gateway.url + "/queue", json=BODY, headers=headers, timeout=30)
        codes.append(response.status_code)
        if response.status_code == 202:
            job_ids.append((gateway, response.json()["id"]))
    assert codes == [202, 202, 202, 429]  # capacity 3, one bucket across both gateways
    for gateway, job_id in job_ids:
        assert wait_done(gateway, headers, job_id)["status"] == "complete"
    b.cli("keys", "revoke", key_id)
    refused = httpx.get(a.url + "/usage", headers=headers, timeout=30)
    assert refused.status_code == 401
    assert refused.json()["error"] == "revoked_api_key"

"""GET /capacity through a real gateway, a real worker and the embedded chDB store: the counts
and rates of the traffic sent, the service times the usage log recorded, admins only, bad
parameters as 400s, and the CLI asking the gateway that owns the store."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
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
from support.worker_api import wait_idle

CONFIG = (
    ONE_WORKER_CONFIG
    + """
[gateway.metering]
flush_interval_seconds = 0.2

[gateway.plans.default]
rate_capacity = 1000
rate_refill_per_second = 100

[gateway.plans.admin]
admin = true
rate_capacity = 1000
rate_refill_per_second = 100
"""
)
SMALL = {"width": 64, "height": 64, "steps": 2}
SENT = 8  # 5 synchronous runs, 3 queued jobs
WINDOW = 600


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("capacity"), CONFIG.format(worker=worker.url))
    customer = bearer(process.new_key("carol"))
    for seed in range(5):
        response = httpx.post(
            f"{process.url}/image/sd/tiny/t2i", headers=customer, timeout=60,
            json={"prompt": "a fox", "seed": seed, **SMALL},
        )  # fmt: skip
        assert response.status_code == 200, response.text
    body = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
            "prompt": "a fox", **SMALL}  # fmt: skip
    for seed in range(5, 8):
        queued = httpx.post(f"{process.url}/queue", json={**body, "seed": seed}, headers=customer)
        assert queued.status_code == 202, queued.text
        assert wait_done(process, customer, queued.json()["id"])["status"] == "complete"
    wait_idle(worker)
    yield process
    stop_gateway(process)


def capacity_when(gateway: GatewayProcess, requests: int, **params: str) -> dict[str, Any]:
    """GET /capacity once the hot path holds ``requests`` requests (it flushes every 0.2 s)."""
    deadline = time.monotonic() + 30
    admin = bearer(gateway.admin_key)
    while True:
        response = httpx.get(f"{gateway.url}/capacity", headers=admin, params=params, timeout=10)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        seen = sum(m["requests"] for m in body["models"])
        if seen >= requests or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_capacity_matches_the_traffic_sent(gateway: GatewayProcess) -> None:
    body = capacity_when(gateway, SENT, window=str(WINDOW), target_wait="0.5")
    assert body["window_seconds"] == WINDOW and body["target_p95_wait_s"] == 0.5
    assert set(body["queue_depth"]) == {"high", "normal", "low"}
    (plan,) = body["models"]
    assert plan["model"] == "image/sd/tiny" and plan["requests"] == SENT
    assert plan["servers"] == 1
    assert plan["backends"] == [{"id": "w1", "capacity": 1, "healthy": True}]
    figures = plan["figures"]
    assert figures["arrival_rate"]["value"] == pytest.approx(SENT / WINDOW)
    assert figures["arrival_rate"]["formula"] == "λ = n / window"
    # The service times are the usage log's own inference times.
    records = gateway.usage_records()
    assert len(records) == SENT
    services = [r["inference_time_us"] / 1e6 for r in records]
    assert figures["service_time_mean"]["value"] == pytest.approx(statistics.fmean(services))
    assert figures["service_time_variance"]["value"] == pytest.approx(
        statistics.variance(services), rel=1e-6, abs=1e-12
    )
    waits = [r["queue_time_us"] / 1e6 for r in records]
    assert figures["measured_mean_wait"]["value"] == pytest.approx(statistics.fmean(waits))
    rho = SENT / WINDOW * statistics.fmean(services)
    assert figures["utilisation"]["value"] == pytest.approx(rho)
    assert all(f["formula"] for f in figures.values())
    assert figures["servers_needed"]["value"] >= 1
    assert plan["by_servers"][0]["servers"] == 1
    assert set(plan["by_servers"][0]) == {"servers", "utilisation", "mean_wait_s", "p95_wait_s"}
    assert any("only 8 requests" in w for w in plan["warnings"])


def test_one_model_or_one_with_no_traffic(gateway: GatewayProcess) -> None:
    capacity_when(gateway, SENT)
    (plan,) = capacity_when(gateway, 0, model="image/sd/none")["models"]
    assert plan["requests"] == 0 and plan["servers"] == 0 and plan["planning_model"] is None
    assert plan["by_servers"] == [] and "no requests in the window" in plan["warnings"][-1]
    (tiny,) = capacity_when(gateway, SENT, model="image/sd/tiny")["models"]
    assert tiny["requests"] == SENT


def test_capacity_is_for_admins(gateway: GatewayProcess) -> None:
    customer = bearer(gateway.new_key("dave"))
    response = httpx.get(f"{gateway.url}/capacity", headers=customer)
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "forbidden" and "admins" in body["message"] and body["request_id"]
    assert httpx.get(f"{gateway.url}/capacity").status_code == 401


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"window": "10"}, "window"),
        ({"window": str(31 * 86_400)}, "window"),
        ({"window": "an hour"}, "window"),
        ({"target_wait": "-1"}, "target_wait"),
        ({"target_wait": "nan"}, "target_wait"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_parameters_are_400s(
    gateway: GatewayProcess, params: dict[str, str], field: str
) -> None:
    response = httpx.get(
        f"{gateway.url}/capacity", headers=bearer(gateway.admin_key), params=params
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_request" and field in body["message"]
    assert set(body) == {"error", "message", "request_id", "details"}


def test_the_cli_asks_the_gateway_that_owns_the_store(gateway: GatewayProcess) -> None:
    capacity_when(gateway, SENT)
    key, url = gateway.admin_key, gateway.url
    report = orjson.loads(
        gateway.cli("capacity", "--json", "--window", "600", "--api-key", key, "--url", url)
    )
    (plan,) = report["models"]
    assert plan["requests"] == SENT and report["window_seconds"] == 600
    text = gateway.cli("capacity", "--target-wait", "2", "--api-key", key, "--url", url)
    # Words, not whole formulas: the table wraps its cells to the terminal's width.
    for word in ("image/sd/tiny", "servers_needed", "Erlang", "warning: only 8 requests"):
        assert word in text, word

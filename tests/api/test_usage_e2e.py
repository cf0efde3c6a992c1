"""Metering through a real gateway process, a real worker and the embedded chDB store:
GET /usage against what the responses said, budgets under concurrency, a kill -9 before the
hot path flushed, and bad input."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
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
from support.processes import CLI, WorkerProcess
from support.worker_api import wait_idle

PRICED = (
    ONE_WORKER_CONFIG.replace(
        "local_demo_worker = false", "local_demo_worker = false\nreservation_gpu_seconds = 0.2"
    )
    + """
[gateway.metering]
flush_interval_seconds = {flush}

[gateway.plans.default]
rate_capacity = 1000
rate_refill_per_second = 100
price_per_gpu_second = 0.002
family_prices = {{ sd = 0.004 }}

[gateway.plans.admin]
admin = true
rate_capacity = 1000
rate_refill_per_second = 100

[gateway.budgets.tight]
monthly_gpu_seconds = 0.6
"""
)
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = PRICED.format(worker=worker.url, flush=0.2)
    process = start_gateway(tmp_path_factory.mktemp("usage"), config)
    yield process
    stop_gateway(process)


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker)


def sync_run(gateway: GatewayProcess, headers: dict[str, str], seed: int) -> float:
    response = httpx.post(
        f"{gateway.url}/image/sd/tiny/t2i", headers=headers, timeout=60,
        json={"prompt": "a fox", "seed": seed, **SMALL},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return float(response.headers["x-gpu-seconds"])


def queued_run(gateway: GatewayProcess, headers: dict[str, str], seed: int) -> dict[str, Any]:
    body = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
            "prompt": "a fox", "seed": seed, **SMALL}  # fmt: skip
    response = httpx.post(f"{gateway.url}/queue", json=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    return wait_done(gateway, headers, response.json()["id"])


def usage_when(
    gateway: GatewayProcess, headers: dict[str, str], requests: int, **params: str
) -> dict[str, Any]:
    """GET /usage once the hot path holds ``requests`` requests (it flushes every 0.2 s)."""
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(f"{gateway.url}/usage", headers=headers, params=params, timeout=10)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["totals"]["requests"] >= requests or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_usage_matches_what_each_response_reported(gateway: GatewayProcess) -> None:
    carol = bearer(gateway.new_key("carol"))
    reported = [sync_run(gateway, carol, seed) for seed in range(3)]
    jobs = [queued_run(gateway, carol, seed) for seed in range(3, 5)]
    assert all(job["usage"]["billable"] and job["usage"]["currency"] == "USD" for job in jobs)
    reported += [job["usage"]["gpu_seconds"] for job in jobs]
    usage = usage_when(gateway, carol, 5)
    totals = usage["totals"]
    assert totals["requests"] == 5 and totals["billable_requests"] == 5
    # X-GPU-Seconds carries 6 decimals; the store keeps the backend's own value.
    assert totals["gpu_seconds"] == pytest.approx(sum(reported), abs=5e-6 * len(reported))
    # The sd family's price (0.004 per GPU-second), charged per record.
    assert totals["cost"] == pytest.approx(sum(reported) * 0.004, abs=1e-8)
    assert usage["customer_id"] == "carol" and usage["currency"] == "USD"
    (row,) = usage["rows"]
    assert row["model"] == "image/sd/tiny" and row["day"] == time.strftime(
        "%Y-%m-%d", time.gmtime()
    )
    assert row["requests"] == 5
    assert usage["pending_records"] == 0
    by_model = usage_when(gateway, carol, 5, group_by="model")
    assert [(r["model"], r["day"]) for r in by_model["rows"]] == [("image/sd/tiny", None)]


def test_customers_see_only_their_own_usage_and_admins_anyones(gateway: GatewayProcess) -> None:
    dave = bearer(gateway.new_key("dave"))
    sync_run(gateway, dave, 1)
    response = httpx.get(f"{gateway.url}/usage", headers=dave, params={"customer_id": "carol"})
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    admin = bearer(gateway.admin_key)
    seen = usage_when(gateway, admin, 1, customer_id="dave")
    assert seen["customer_id"] == "dave" and seen["totals"]["requests"] == 1


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"from": "yesterday"}, "ISO 8601"),
        ({"from": "2026-02-01", "to": "2026-01-01"}, "before"),
        ({"from": "2020-01-01", "to": "2026-01-01"}, "366"),
        ({"group_by": "model,colour"}, "colour"),
    ],
)
def test_bad_ranges_and_groupings_are_400s(
    gateway: GatewayProcess, params: dict[str, str], needle: str
) -> None:
    response = httpx.get(f"{gateway.url}/usage", headers=bearer(gateway.admin_key), params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_request" and needle in body["message"]


def test_concurrent_requests_never_overspend_a_small_budget(gateway: GatewayProcess) -> None:
    tight = bearer(gateway.new_key("tight"))
    body = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
            "prompt": "a fox", **SMALL}  # fmt: skip

    async def wave(client: httpx.AsyncClient, size: int) -> list[httpx.Response]:
        return await asyncio.gather(
            *(client.post("/queue", json={**body, "seed": i}, headers=tight) for i in range(size))
        )

    async def spend() -> tuple[int, int, list[httpx.Response]]:
        admitted, in_flight, refusals = 0, 0, []
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            for _ in range(12):  # waves until the budget admits nothing more
                responses = await wave(client, 8)
                accepted = [r for r in responses if r.status_code == 202]
                refusals += [r for r in responses if r.status_code == 402]
                assert all(r.status_code in (202, 402) for r in responses), responses
                for response in accepted:
                    await asyncio.to_thread(wait_done, gateway, tight, response.json()["id"])
                admitted += len(accepted)
                in_flight = max(in_flight, len(accepted))
                if not accepted:
                    break
        return admitted, in_flight, refusals

    # The model is seen first (another customer's run), so that every admission below is sized
    # from its cost model rather than the floor for a model never seen (OPERATIONS.md).
    sync_run(gateway, bearer(gateway.new_key("warm")), 99)
    admitted, in_flight, refusals = asyncio.run(spend())
    assert admitted >= 3 and refusals
    refusal = refusals[0].json()
    assert refusal["error"] == "budget_exceeded" and "budget of 0.6" in refusal["message"]
    assert refusal["details"]["limit"] == 0.6
    usage = usage_when(gateway, tight, admitted)
    assert usage["totals"]["requests"] == admitted
    # The promise (DESIGN.md): a month never ends above its budget by more than one denoising
    # step per run in flight. Admission is exact (check and reserve with no await between), but
    # a 2-step run measured on a loaded machine can cost more than its reservation, and its one
    # progress event arrives while its last step already runs (CI once: 0.96 of 0.6 from 3 runs
    # of 0.32 when a never-seen model reserved the 0.2 floor).
    records = [r for r in gateway.usage_records() if r["billable"] and r["customer_id"] == "tight"]
    assert len(records) == admitted
    step = max(r["gpu_seconds"] / r["num_steps"] for r in records if r["num_steps"])
    assert usage["totals"]["gpu_seconds"] <= 0.6 + in_flight * step + 1e-9, (records, in_flight)
    assert usage["budget"]["spent_gpu_seconds"] == pytest.approx(
        usage["totals"]["gpu_seconds"], abs=1e-5
    )
    assert usage["budget"]["limit_gpu_seconds"] == 0.6
    assert usage["budget"]["reserved_gpu_seconds"] == 0


def test_metrics_show_the_writer(gateway: GatewayProcess) -> None:
    text = httpx.get(f"{gateway.url}/metrics").text
    for name in ("render_usage_writer_lag_seconds", "render_usage_buffer_records",
                 "render_usage_spool_records", "render_usage_dropped_total"):  # fmt: skip
        assert f"\n{name} " in text or text.startswith(f"{name} "), name
    assert "\nrender_usage_dropped_total 0.0" in text


def test_a_kill_9_before_the_flush_loses_nothing(worker: WorkerProcess, tmp_path: Path) -> None:
    data = tmp_path / "crash"
    slow = start_gateway(data, PRICED.format(worker=worker.url, flush=60))  # never flushes here
    erin = bearer(slow.new_key("erin"))
    reported = [sync_run(slow, erin, seed) for seed in range(2)]
    reported += [queued_run(slow, erin, 7)["usage"]["gpu_seconds"]]
    before = httpx.get(f"{slow.url}/usage", headers=erin).json()
    assert before["totals"]["requests"] == 0 and before["pending_records"] == 3
    os.kill(slow.process.pid, signal.SIGKILL)
    slow.process.wait(10)
    again = start_gateway(data, PRICED.format(worker=worker.url, flush=0.2))
    try:
        usage = usage_when(again, erin, 3)
        assert usage["totals"]["requests"] == 3  # every record, once
        assert usage["totals"]["gpu_seconds"] == pytest.approx(sum(reported), abs=2e-5)
        assert usage["budget"]["spent_gpu_seconds"] == pytest.approx(sum(reported), abs=2e-5)
    finally:
        stop_gateway(again)
    # With no gateway running, the CLI opens the embedded store itself.
    direct = orjson.loads(again.cli("usage", "--customer", "erin", "--json"))
    assert direct["totals"]["requests"] == 3 and direct["customer_id"] == "erin"
    everyone = orjson.loads(again.cli("usage", "--json"))
    assert [(r["customer_id"], r["requests"]) for r in everyone["rows"]] == [("erin", 3)]
    assert "erin" in again.cli("usage", "--customer", "erin")
    # ... and reconciles the two paths itself (the stopped gateway sealed its last batch).
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    report = orjson.loads(again.cli("reconcile", "--from", day, "--json"))
    assert report["status"] == "reconciled" and report["hot_requests"] == 3


def test_the_cli_asks_a_running_gateway_that_owns_the_store(gateway: GatewayProcess) -> None:
    frank = gateway.new_key("frank")
    sync_run(gateway, bearer(frank), 3)
    usage_when(gateway, bearer(frank), 1)
    report = orjson.loads(gateway.cli("usage", "--json", "--api-key", frank, "--url", gateway.url))
    assert report["customer_id"] == "frank" and report["totals"]["requests"] == 1
    refused = subprocess.run(
        [*CLI, "usage", "--config", str(gateway.config_path), "--data-dir", str(gateway.data_dir)],
        capture_output=True, timeout=60, env={k: v for k, v in os.environ.items()
                                              if k != "RENDER_API_KEY"},
    )  # fmt: skip
    assert refused.returncode == 2
    assert b"owns the usage store" in refused.stderr and b"--api-key" in refused.stderr


def test_admins_get_the_operators_dashboard(gateway: GatewayProcess) -> None:
    judy = bearer(gateway.new_key("judy"))
    sync_run(gateway, judy, 11)
    usage_when(gateway, judy, 1)
    refused = httpx.get(f"{gateway.url}/usage/dashboard", headers=judy)
    assert refused.status_code == 403
    board = httpx.get(f"{gateway.url}/usage/dashboard", headers=bearer(gateway.admin_key)).json()
    assert sum(m["requests"] for m in board["per_minute"]) >= 1
    (latency,) = [q for q in board["latency"] if q["model_name"] == "image/sd/tiny"]
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] and latency["count"] >= 1
    assert any(o["requests"] >= 1 and o["gpu_seconds"] > 0 for o in board["operators"])
    mine = httpx.get(
        f"{gateway.url}/usage/dashboard", headers=bearer(gateway.admin_key),
        params={"customer_id": "judy"},
    ).json()  # fmt: skip
    assert sum(m["requests"] for m in mine["per_minute"]) == 1

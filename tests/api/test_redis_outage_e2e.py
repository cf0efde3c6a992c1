"""One gateway process on a real redis-server (``[gateway.shared] url``) and one worker, Redis
killed with SIGKILL under it and started again on the same port and directory (AOF,
``appendfsync always``): while it is down, /ready and every customer path that needs it answer
503 ``store_unavailable`` with a Retry-After, quickly, naming no host, port or path — a key
that cannot be looked up is a 503, not a 401 — and a refused submission leaves no job; once
it is back, without restarting the gateway, /ready is 200 again, the job accepted before the
outage completes and new ones are accepted and run (the scheduler loops survived)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from support.gateway import (
    GatewayProcess,
    bearer,
    start_gateway,
    stop_gateway,
    wait_done,
)
from support.processes import WorkerProcess, stop_process
from support.redis_server import RedisServer, start_redis
from support.shared_stores import replica_config

BODY = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": "a fox",
        "steps": 2, "width": 64, "height": 64}  # fmt: skip
QUICK = 8.0  # every answer while Redis is down comes within this (connect refused: at once)


def config(worker: WorkerProcess, redis_url: str, shared: Path) -> str:
    return replica_config(worker.url, redis_url, shared)


@pytest.fixture
def outage(worker: WorkerProcess, tmp_path: Path) -> Iterator[tuple[GatewayProcess, list[Any]]]:
    """The gateway, and a one-item list holding the current RedisServer (the test replaces it
    when it restarts Redis), stopped whatever happened."""
    servers: list[RedisServer] = [start_redis(tmp_path / "redis")]
    shared = tmp_path / "shared"
    shared.mkdir()
    gateway = None
    try:
        gateway = start_gateway(tmp_path / "gw", config(worker, servers[0].url, shared))
        yield gateway, servers
    finally:
        if gateway is not None:
            stop_gateway(gateway)
        for server in servers:
            stop_process(server.process)


def timed(method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.request(method, url, timeout=30, **kwargs)
    return response, time.monotonic() - started


def assert_store_unavailable(response: httpx.Response, took: float, redis_port: int) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    body = response.json()
    assert body["error"] == "store_unavailable", body
    assert response.headers["Retry-After"].isdigit()
    text = response.text
    assert str(redis_port) not in text and "127.0.0.1" not in text and "/tmp" not in text
    assert "Traceback" not in text and "redis" not in text.lower()
    assert took < QUICK, took


def job_keys(redis_url: str) -> set[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return {k for k in client.scan_iter(match="render:jobs:job:*", count=1000)}
    finally:
        client.close()


def test_redis_down_is_503_everywhere_and_back_recovers_without_a_restart(
    outage: tuple[GatewayProcess, list[RedisServer]],
) -> None:
    gateway, servers = outage
    server = servers[0]
    admin = bearer(gateway.admin_key)
    assert httpx.get(gateway.url + "/ready", timeout=10).json()["stores"]["jobs"] is True
    before = httpx.post(gateway.url + "/queue", json=BODY, headers=admin, timeout=30)
    assert before.status_code == 202  # acknowledged by Redis (appendfsync always)
    accepted_id = before.json()["id"]
    keys_before = job_keys(server.url)

    server.process.kill()  # SIGKILL: no shutdown, no last write
    server.process.wait(timeout=10)

    ready, took = timed("GET", gateway.url + "/ready")
    assert ready.status_code == 503 and took < 3, (ready.text, took)
    body = ready.json()
    assert body["ready"] is False and body["stores"]["jobs"] is False
    assert body["stores"]["keys"] is False
    assert httpx.get(gateway.url + "/health", timeout=10).status_code == 200
    # Monitoring goes on: the last gauges, not a 503 or a 500.
    assert httpx.get(gateway.url + "/metrics", timeout=10).status_code == 200

    port = server.port
    refused, took = timed("POST", gateway.url + "/queue", json=BODY, headers=admin)
    assert_store_unavailable(refused, took, port)
    # The key store is on Redis: a key that cannot be looked up is a 503, never a 401.
    unknown = bearer("rk_" + "0" * 40)
    for method, path, kwargs in [
        ("GET", f"/jobs/{accepted_id}", {"headers": admin}),
        ("DELETE", f"/jobs/{accepted_id}", {"headers": admin}),
        ("GET", f"/jobs/{accepted_id}/events", {"headers": admin}),
        ("POST", "/image/sd/tiny/t2i", {"headers": admin, "json": {"prompt": "x", "steps": 1,
                                                                   "width": 64, "height": 64}}),
        ("POST", "/queue", {"headers": unknown, "json": BODY}),
        ("GET", f"/jobs/{accepted_id}", {"headers": unknown}),
    ]:  # fmt: skip
        response, took = timed(method, gateway.url + path, **kwargs)
        assert_store_unavailable(response, took, port)

    # Back on the same port and directory: the AOF replays what was acknowledged.
    servers[0] = start_redis(server.directory, port)
    assert job_keys(server.url) == keys_before  # the refused POSTs stored no job
    deadline = time.monotonic() + 20
    while (ready := httpx.get(gateway.url + "/ready", timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.2)
    assert all(ready.json()["stores"].values())

    # The job accepted before the outage runs to the end: the scheduler loop survived.
    assert wait_done(gateway, admin, accepted_id, timeout=40)["status"] == "complete"
    after = httpx.post(gateway.url + "/queue", json=BODY, headers=admin, timeout=30)
    assert after.status_code == 202, after.text
    assert wait_done(gateway, admin, after.json()["id"], timeout=40)["status"] == "complete"
    assert gateway.process.poll() is None  # never restarted

    # The metering writer's thread survived the outage: both runs reach the usage store.
    deadline = time.monotonic() + 30
    while True:
        usage = httpx.get(gateway.url + "/usage", headers=admin, timeout=30)
        body = usage.json()
        settled = usage.status_code == 200 and body["pending_records"] == 0
        if settled and body["totals"]["requests"] == 2:
            break
        assert time.monotonic() < deadline, usage.text
        time.sleep(0.3)
    log = gateway.log_path.read_text(errors="replace")
    # The loops logged and retried; none ended, and no request became a 500.
    assert "stopped unexpectedly" not in log and "never retrieved" not in log
    assert "unhandled error" not in log

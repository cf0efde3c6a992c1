"""Two gateway processes on one real redis-server sharing ONE reference worker of capacity 1
(``max_concurrency`` 1): with the backend slots on the shared Redis (the default under
``[gateway.shared] url``) the worker's capacity is counted once across both, so a load put
through both at once all completes and the worker never answers ``busy``; with each replica
counting for itself (``slots = "memory://"``) the same load does draw ``busy`` answers (each
pool thinks the worker's slot is free), which shows the first half can fail."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from support.gateway import (
    GatewayProcess,
    bearer,
    start_gateway,
    stop_gateway,
    wait_done,
)
from support.processes import WorkerProcess, stop_process
from support.redis_server import start_redis
from support.shared_stores import copy_secrets, replica_config
from support.worker_api import wait_idle

# Long enough (a few hundred ms on the demo pipeline) that both replicas' runs would overlap.
BODY = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": "a fox",
        "steps": 12, "width": 64, "height": 64}  # fmt: skip
JOBS_PER_REPLICA = 4


@contextlib.contextmanager
def two_gateways(
    worker: WorkerProcess, tmp_path: Path, slots: str
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    redis = start_redis(tmp_path / "redis")
    try:
        shared = tmp_path / "shared"
        shared.mkdir()
        text = replica_config(worker.url, redis.url, shared, slots + "\n")
        first = start_gateway(tmp_path / "a", text)
        try:
            copy_secrets(first.data_dir, tmp_path / "b")
            second = start_gateway(tmp_path / "b", text)
        except BaseException:
            stop_gateway(first)
            raise
        try:
            yield first, second
        finally:
            stop_gateway(second)
            stop_gateway(first)
    finally:
        stop_process(redis.process)


def load_both(worker: WorkerProcess, a: GatewayProcess, b: GatewayProcess) -> tuple[list[str], int]:
    """Submit ``JOBS_PER_REPLICA`` jobs through each replica at once; wait for every one.
    Returns (each job's final status, the busy answers the worker gave meanwhile)."""
    admin = bearer(a.admin_key)  # the keys are shared: a's admin key works on b too
    before = wait_idle(worker)["rejected_busy"]

    def submit(gateway: GatewayProcess) -> tuple[GatewayProcess, str]:
        response = httpx.post(gateway.url + "/queue", json=BODY, headers=admin, timeout=30)
        assert response.status_code == 202, response.text
        return gateway, str(response.json()["id"])

    with ThreadPoolExecutor(2 * JOBS_PER_REPLICA) as threads:
        submitted = list(threads.map(submit, [a, b] * JOBS_PER_REPLICA))
    statuses = [wait_done(gateway, admin, job_id, 180)["status"] for gateway, job_id in submitted]
    after = wait_idle(worker, 60)["rejected_busy"]
    return statuses, after - before


def test_shared_slots_count_the_workers_capacity_once_across_replicas(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    with two_gateways(worker, tmp_path, slots="") as (a, b):
        started = time.monotonic()
        statuses, busy = load_both(worker, a, b)
        assert statuses == ["complete"] * (2 * JOBS_PER_REPLICA)
        assert busy == 0, f"the worker answered busy {busy} times"
        assert time.monotonic() - started < 180
        for gateway in (a, b):
            assert "Traceback" not in gateway.log()


def test_slots_counted_per_replica_draw_busy_answers_under_the_same_load(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    with two_gateways(worker, tmp_path, slots='slots = "memory://"') as (a, b):
        statuses, busy = load_both(worker, a, b)
        # Still all complete (a busy answer is no capacity: the job waits, no breaker trips),
        # but only after the churn the shared slots avoid.
        assert statuses == ["complete"] * (2 * JOBS_PER_REPLICA)
        assert busy > 0

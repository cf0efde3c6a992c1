"""The scheduler claims no more jobs than there are backend slots, through a real gateway and
worker: a burst of queued jobs on one slot runs one at a time, in admission order.

Found by the capacity example (scripts/capacity_example.py): every claim saw the slot the last
claimed job had not taken yet, so a burst was claimed at once — jobs "running" while they
waited for the slot, out of their lanes' order, their wait counted as inference time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support.gateway import ONE_WORKER_CONFIG, GatewayProcess, bearer, start_gateway, stop_gateway
from support.processes import WorkerProcess
from support.worker_api import wait_idle

JOB = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
       "prompt": "a fox", "width": 64, "height": 64, "steps": 20}  # fmt: skip
# A run (about 0.2 s here) outlasts the storing of the run before it (about 5–10 ms).
BURST = 8


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(
        tmp_path_factory.mktemp("slots"), ONE_WORKER_CONFIG.format(worker=worker.url)
    )
    yield process
    stop_gateway(process)
    wait_idle(worker)


async def burst_and_watch(gateway: GatewayProcess) -> tuple[list[str], list[int]]:
    """Submit BURST jobs at once, then sample the running count until every job has ended."""
    admin = bearer(gateway.admin_key)
    async with httpx.AsyncClient(base_url=gateway.url, headers=admin, timeout=60) as client:
        ids = []
        for seed in range(BURST):  # in order, so that admission order is known
            answer = await client.post("/queue", json={**JOB, "seed": seed})
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
        running = []
        while True:
            stats = (await client.get("/queue/stats")).json()
            running.append(stats["running"])
            if stats["queued"] == 0 and stats["running"] == 0:
                return ids, running
            await asyncio.sleep(0.005)


def test_a_burst_on_one_slot_runs_one_job_at_a_time_in_admission_order(
    gateway: GatewayProcess,
) -> None:
    ids, running = asyncio.run(burst_and_watch(gateway))
    # Capacity 1: one job runs on the worker; the one before it may still be storing its
    # outcome (the next is claimed as the slot frees, scheduler._dispatch_when_possible). A
    # claim that counted a slot not yet taken claimed the burst at once (4 here, 14 in the
    # capacity example).
    assert max(running) <= 2, running
    admin = bearer(gateway.admin_key)
    jobs = [httpx.get(f"{gateway.url}/jobs/{job_id}", headers=admin).json() for job_id in ids]
    assert {job["status"] for job in jobs} == {"complete"}
    starts = [job["started_at"] for job in jobs]
    assert starts == sorted(starts)  # the lane's order, not whichever poll won the slot
    records = [record_of(gateway, job_id) for job_id in ids]
    # A later job's wait is queue time, not inference time: each ran alone on the worker.
    inference = [r["inference_time_ms"] for r in records]
    queued = [r["queue_time_ms"] for r in records]
    assert max(inference) < min(queued[-3:]), (inference, queued)


def record_of(gateway: GatewayProcess, job_id: str) -> dict[str, Any]:
    """The job's usage record, once the hot path has it (it is fed within about a second)."""
    deadline = time.monotonic() + 30
    while True:
        found = httpx.get(
            f"{gateway.url}/usage/records", headers=bearer(gateway.admin_key),
            params={"job_id": job_id},
        ).json()["records"]  # fmt: skip
        if found or time.monotonic() > deadline:
            assert found, job_id
            record: dict[str, Any] = found[0]
            return record
        time.sleep(0.1)

"""A cancel whose signal never reached its run (a pub/sub message lost while a replica
reconnected to Redis) still stops the run: the runner reads its running jobs' cancel flags
every ``CANCEL_WATCH_SECONDS``. In process, on memory stores, against the real reference
worker; the cancel is recorded on the job only (``JobStore.request_cancel``), never sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from render_gateway.application.scheduler import CANCEL_WATCH_SECONDS
from render_gateway.application.services import GatewayServices
from render_gateway.core.jobs import JobStatus
from render_gateway.stores.jobs import CancelResult

from support.in_process import in_process_gateway, one_backend_config
from support.processes import WorkerProcess

BODY = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": "a fox",
        "steps": 500, "width": 256, "height": 256}  # fmt: skip


@pytest.fixture
async def gateway(
    tmp_path: Path, worker: WorkerProcess
) -> AsyncIterator[tuple[GatewayServices, httpx.AsyncClient]]:
    async with in_process_gateway(one_backend_config(tmp_path, worker.url)) as running:
        yield running


async def test_a_cancel_recorded_on_the_job_stops_a_run_its_signal_missed(
    gateway: tuple[GatewayServices, httpx.AsyncClient],
) -> None:
    services, client = gateway
    response = await client.post("/queue", json=BODY)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 30
    while (job := await services.stores.jobs.get(job_id)) and job.status is not JobStatus.running:
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a few steps in
    # Durable on the job, as a DELETE on another replica leaves it; no signal is sent.
    assert await services.stores.jobs.request_cancel(job_id, job.customer_id) is (
        CancelResult.running
    )
    marked = time.monotonic()
    while (job := await services.stores.jobs.get(job_id)) and not job.status.terminal:
        assert time.monotonic() - marked < CANCEL_WATCH_SECONDS + 10, "the run was not stopped"
        await asyncio.sleep(0.05)
    assert job is not None and job.status is JobStatus.cancelled
    usage = job.extra["usage"]
    assert usage["status"] == "cancelled" and 0 < usage["num_steps"] < 500  # billed what ran

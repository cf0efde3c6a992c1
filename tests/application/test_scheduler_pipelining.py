"""The next queued job is claimed as soon as the last one's run frees its slot, not once the
last one's outputs are stored: a backend does not idle while the gateway writes (object storage
can take a while). In process, on memory stores, against the real reference worker; the asset
store is the real memory one, its ``put`` made slow by a sleep (a slow object store, which
cannot run here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from render_gateway.application.services import GatewayServices
from render_gateway.core.jobs import JobStatus

from support.in_process import in_process_gateway, one_backend_config
from support.processes import WorkerProcess

BODY = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": "a fox",
        "steps": 2, "width": 64, "height": 64}  # fmt: skip
STORE_SECONDS = 0.6  # how long storing one output takes


@pytest.fixture
async def gateway(
    tmp_path: Path, worker: WorkerProcess
) -> AsyncIterator[tuple[GatewayServices, httpx.AsyncClient]]:
    async with in_process_gateway(one_backend_config(tmp_path, worker.url, capacity=1)) as running:
        yield running


async def test_the_next_job_runs_while_the_last_one_stores_its_outputs(
    gateway: tuple[GatewayServices, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    services, client = gateway
    stores_began: list[float] = []
    put = services.stores.assets.put

    async def slow_put(*args: Any, **kwargs: Any) -> Any:
        stores_began.append(time.time())
        await asyncio.sleep(STORE_SECONDS)
        return await put(*args, **kwargs)

    monkeypatch.setattr(services.stores.assets, "put", slow_put)
    ids = []
    for seed in range(2):
        response = await client.post("/queue", json={**BODY, "seed": seed})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    deadline = time.monotonic() + 60
    while True:
        first, second = [await services.stores.jobs.get(job_id) for job_id in ids]
        assert first is not None and second is not None
        if first.status.terminal and second.status.terminal:
            break
        assert time.monotonic() < deadline, "the jobs did not end"
        await asyncio.sleep(0.05)
    assert {first.status, second.status} == {JobStatus.complete}
    assert first.started_at is not None and second.started_at is not None
    assert first.completed_at is not None
    # The second was claimed as the first's run ended (``completed_at``, when its outcome came
    # back) and began storing, not once it was stored: the sweep's once-a-second wake would
    # come anywhere up to a second later, the first's end only after STORE_SECONDS.
    assert first.completed_at <= stores_began[0] < first.completed_at + 0.25, stores_began
    assert second.started_at - stores_began[0] < 0.25, (stores_began, second.started_at)

"""The socket-independent parts of ``GET /ws``: the outbox's policy for slow readers, a
generate message read as POST /queue's body, and a connection's jobs over the real use cases
and in-memory stores, the test playing the run (the end-to-end behaviour, with a real server,
worker and client, is tests/api/test_ws_e2e.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from render_gateway.application.job_cases import SubmitRequest, Submitted
from render_gateway.application.refusals import Refused
from render_gateway.application.services import GatewayServices
from render_gateway.application.settle import RUNNING, Ending
from render_gateway.application.socket_jobs import (
    QUEUE_FIELDS,
    Outbox,
    SocketJobs,
    SocketStats,
    client_id_of,
    queue_body_of,
)
from render_gateway.auth.principal import Principal
from render_gateway.config import (
    BackendConfig,
    CatalogEntryConfig,
    GatewayConfig,
    ReconcileConfig,
)
from render_gateway.core.jobs import Job, JobError, JobStatus, route_key

from support.memory_stores import memory_stores
from support.processes import free_port


async def test_a_full_outbox_drops_progress_never_terminal_messages() -> None:
    outbox = Outbox(limit=3)
    assert outbox.put({"type": "ack"})
    assert outbox.put({"type": "progress", "step": 1}, droppable=True)
    assert outbox.put({"type": "progress", "step": 2}, droppable=True)
    assert not outbox.put({"type": "progress", "step": 3}, droppable=True)  # full: dropped
    assert outbox.put({"type": "complete"})  # never dropped, past the limit too
    assert outbox.put({"type": "error"})
    assert len(outbox) == 5 and outbox.dropped == 1
    got = [(await outbox.get())["type"] for _ in range(5)]
    assert got == ["ack", "progress", "progress", "complete", "error"]


async def test_reading_waits_while_the_outbox_is_full() -> None:
    outbox = Outbox(limit=2)
    outbox.put({"n": 1})
    outbox.put({"n": 2})
    room = asyncio.ensure_future(outbox.room())
    await asyncio.sleep(0.01)
    assert not room.done()  # the client is not reading: neither does the connection
    assert (await outbox.get())["n"] == 1
    await asyncio.wait_for(room, 1)
    drained = asyncio.ensure_future(outbox.drained())
    await asyncio.sleep(0.01)
    assert not drained.done()
    await outbox.get()
    await asyncio.wait_for(drained, 1)


async def test_get_waits_for_a_message() -> None:
    outbox = Outbox()
    waiting = asyncio.ensure_future(outbox.get())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    outbox.put({"type": "ack"})
    assert (await asyncio.wait_for(waiting, 1))["type"] == "ack"


def test_a_generate_message_is_the_flat_queue_body() -> None:
    message = {"type": "generate", "id": "a", "modality": "image", "family": "sd",
               "model": "tiny", "task": "t2i", "priority": "low", "ttl": 60,
               "request": {"prompt": "a fox", "steps": 4, "my_key": [1]}}  # fmt: skip
    assert queue_body_of(message) == {
        "modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
        "priority": "low", "ttl": 60, "prompt": "a fox", "steps": 4, "my_key": [1],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "generate", "id": 1, "prompt": "beside request"}, "prompt"),
        ({"type": "generate", "id": 1, "request": "a fox"}, "request"),
        ({"type": "generate", "id": 1, "request": {"prompt": "x", "task": "t2i"}}, "request.task"),
    ],
)
def test_a_misplaced_field_is_refused_by_name(message: dict[str, object], field: str) -> None:
    with pytest.raises(Refused) as refused:
        queue_body_of(message)
    assert refused.value.code == "invalid_request"
    assert refused.value.details == {"field": field}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a", "a"), (7, 7), ("x" * 128, "x" * 128), ("", None), ("x" * 129, None),
     (True, None), (None, None), (1.5, None), ([1], None)],
)  # fmt: skip
def test_client_ids(value: object, expected: object) -> None:
    assert client_id_of({"id": value}) == expected


# ---------------------------------------------------------------- with the real use cases

BODY = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i"}
ALICE = Principal("alice", "default", "api_key")


def config_for(tmp_path: Path) -> GatewayConfig:
    # The API and scheduler roles on in-memory stores; the backend is a closed port, so jobs
    # stay queued until a test claims them and plays their run itself.
    return GatewayConfig(
        data_dir=tmp_path,
        local_demo_worker=False,
        roles=["api", "scheduler"],
        backends=[BackendConfig(id="gone", endpoint=f"http://127.0.0.1:{free_port()}",
                                family="sd", models={"tiny": "demo"})],
        models=[CatalogEntryConfig(modality="image", family="sd", model="tiny", tasks=["t2i"])],
        reconcile=ReconcileConfig(enabled=False),
        stores=memory_stores(),
    )  # fmt: skip


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[GatewayServices]:
    started = await GatewayServices.start(config_for(tmp_path))
    yield started
    await started.stop()


def socket_jobs(
    services: GatewayServices, outbox: Outbox, stats: SocketStats, max_jobs: int = 16
) -> SocketJobs:
    async def submit(body: dict[str, Any], request_id: str) -> Submitted:
        routing = {k: body.get(k) for k in QUEUE_FIELDS}
        return await services.job_cases.submit(
            SubmitRequest(
                modality=body["modality"], family=body["family"], model=body["model"],
                task=body["task"], format=None, backend=None, priority="normal", webhook=None,
                ttl=None, idempotency_key=None,
                generation={k: v for k, v in body.items() if k not in routing},
                digest_source=body,
            ),
            ALICE,
            request_id,
        )  # fmt: skip

    return SocketJobs(services.job_cases, submit, ALICE, outbox, stats, max_jobs=max_jobs)


def generate(client_id: object, **request: object) -> dict[str, Any]:
    return {"type": "generate", "id": client_id, **BODY, "request": {"prompt": "a fox", **request}}


async def run_as_elsewhere(services: GatewayServices, job_id: str) -> Job:
    stored = await services.stores.jobs.get(job_id)
    assert stored is not None
    key = route_key(stored.request)
    claimed = await services.stores.jobs.claim(
        0.0, runnable=frozenset({key}), served=frozenset({key}), holder="other", lease_seconds=30
    )
    assert claimed is not None and claimed.id == job_id
    return claimed


async def relays_done(stats: SocketStats) -> None:
    async with asyncio.timeout(5):
        while stats.followed:  # noqa: ASYNC110 (a counter, not an event)
            await asyncio.sleep(0.01)


async def test_a_reader_that_reads_nothing_misses_progress_never_the_end(
    services: GatewayServices,
) -> None:
    outbox, stats = Outbox(limit=16), SocketStats()
    jobs = socket_jobs(services, outbox, stats)
    await jobs.handle(generate("a", steps=300))
    ack = await outbox.get()
    assert ack["type"] == "ack" and ack["id"] == "a"
    claimed = await run_as_elsewhere(services, ack["job_id"])
    events = services.stores.events
    await events.publish(claimed.id, "started", {})
    for step in range(1, 301):  # the run goes on at its pace: nobody reads the outbox
        await events.publish(claimed.id, "progress", {"progress": step / 300, "step": step})
    error = JobError("backend_error", "the backend failed", False)
    assert await services.settlement.settle(
        claimed, Ending.failed(error), time.time(), expect=RUNNING, holder="other"
    )
    await relays_done(stats)
    messages = [await outbox.get() for _ in range(len(outbox))]
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "started" and kinds[-1] == "error" and len(kinds) <= 17, kinds
    assert messages[-1]["error"] == "backend_error" and messages[-1]["job_id"] == claimed.id
    assert stats.dropped == outbox.dropped > 250
    steps = [m["step"] for m in messages if m["type"] == "progress"]
    assert steps == sorted(steps) and steps[0] == 1  # the oldest kept, the rest dropped


async def test_a_closed_connection_stops_relaying_and_leaves_its_jobs_queued(
    services: GatewayServices,
) -> None:
    outbox, stats = Outbox(), SocketStats()
    jobs = socket_jobs(services, outbox, stats)
    await jobs.handle(generate(1))
    await jobs.handle(generate(2))
    acks = [await outbox.get() for _ in range(2)]
    assert stats.followed == 2 == jobs.in_flight
    await jobs.close()
    assert stats.followed == 0
    for ack in acks:
        job = await services.stores.jobs.get(ack["job_id"])
        assert job is not None and job.status is JobStatus.queued  # nothing was cancelled


async def test_ids_in_flight_are_unique_and_capped_and_cancel_names_them(
    services: GatewayServices,
) -> None:
    outbox, stats = Outbox(), SocketStats()
    jobs = socket_jobs(services, outbox, stats, max_jobs=2)

    async def answer() -> dict[str, Any]:
        while (message := await outbox.get())["type"] == "position":
            pass
        return message

    await jobs.handle(generate("a"))
    first = await answer()
    assert first["type"] == "ack"
    await jobs.handle(generate("a"))
    assert (await answer())["error"] == "duplicate_id"
    await jobs.handle(generate("b"))
    assert (await answer())["type"] == "ack"
    await jobs.handle(generate("c"))
    refused = await answer()
    assert refused["error"] == "too_many_jobs" and refused["details"] == {"limit": 2}
    await jobs.handle({"type": "cancel", "id": "a"})
    cancelling = await answer()
    assert cancelling == {"type": "cancelling", "id": "a", "job_id": first["job_id"],
                          "outcome": "cancelled"}  # fmt: skip
    end = await answer()
    assert end["type"] == "error" and end["error"] == "cancelled" and end["id"] == "a"
    await jobs.handle({"type": "cancel", "id": "zzz"})
    assert (await answer())["error"] == "job_not_found"
    await jobs.handle({"type": "generate", "id": "bad", **BODY, "request": {"prompt": ""}})
    assert (await answer())["error"] == "invalid_request"
    await jobs.close()

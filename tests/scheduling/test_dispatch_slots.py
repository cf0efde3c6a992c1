"""Dispatch with shared backend slots (``[gateway.stores] slots``): a ``memory://`` store shared
by two pools stands for two replicas on one Redis (the Redis store keeps the same contract:
tests/contracts/test_backend_slots.py). The backend is the real reference worker."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator

import aiohttp
import orjson
import pytest
import pytest_asyncio

from render_gateway.inference.backend import BackendError, Progress
from render_gateway.inference.kserve_client import KServeClient
from render_gateway.scheduling.backend_pool import BackendPool, BackendSpec
from render_gateway.scheduling.breaker import BreakerConfig, BreakerState
from render_gateway.scheduling.dispatch import Dispatcher, NoCapacity, RetryPolicy
from render_gateway.stores.backend_slots import SlotKeeper, open_backend_slots

from support.processes import WorkerProcess
from support.worker_api import stats, wait_idle

FAST = RetryPolicy(max_attempts=3, base_delay_seconds=0.01, max_delay_seconds=0.02)


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest_asyncio.fixture
async def slots() -> AsyncIterator[SlotKeeper]:
    keeper = SlotKeeper(open_backend_slots("memory://"))
    yield keeper
    await keeper.close()


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker)


def spec(backend_id: str, endpoint: str, capacity: int = 1) -> BackendSpec:
    return BackendSpec(backend_id, endpoint, "sd", {"tiny": "demo"}, capacity)


def replica(pool: BackendPool, session: aiohttp.ClientSession, slots: SlotKeeper) -> Dispatcher:
    return Dispatcher(
        pool, lambda s: KServeClient(session, s.endpoint), FAST, random.Random(1), slots=slots
    )


def gen(**fields: object) -> bytes:
    return orjson.dumps({"prompt": "a harbour", **fields})


async def test_a_slot_held_by_another_replica_is_no_capacity_without_asking_the_backend(
    worker: WorkerProcess, session: aiohttp.ClientSession, slots: SlotKeeper
) -> None:
    first = BackendPool([spec("w", worker.url)], BreakerConfig(minimum_calls=1))
    second = BackendPool([spec("w", worker.url)], BreakerConfig(minimum_calls=1))
    started = asyncio.Event()

    async def note_start(_event: Progress) -> None:
        started.set()

    before = stats(worker)
    running = asyncio.create_task(
        replica(first, session, slots).run("sd", "tiny", gen(steps=40), "req_s1", note_start)
    )
    try:
        await asyncio.wait_for(started.wait(), 30)
        assert len(slots.held("w")) == 1
        # The second replica's pool has the worker's slot free; the shared slot is not.
        with pytest.raises(NoCapacity, match="busy"):
            await replica(second, session, slots).run("sd", "tiny", gen(), "req_s2")
        backend = second.backends["w"]
        assert second.in_flight() == 0 and backend.failed == 0
        assert backend.breaker.state is BreakerState.closed
        outcome = await asyncio.wait_for(running, 60)
    finally:
        running.cancel()
    assert not outcome.cancelled and outcome.backend_id == "w"
    after = await asyncio.to_thread(wait_idle, worker)
    assert after["rejected_busy"] == before["rejected_busy"]  # never sent: never refused
    assert slots.held("w") == frozenset() and first.in_flight() == 0
    # Given back: the second replica's run now goes through.
    again = await replica(second, session, slots).run("sd", "tiny", gen(), "req_s3")
    assert again.backend_id == "w" and slots.held("w") == frozenset()


async def test_a_full_backend_is_passed_over_for_one_with_a_slot(
    worker: WorkerProcess, session: aiohttp.ClientSession, slots: SlotKeeper
) -> None:
    # "a" would win the pool's choice (fewest in flight, then id) but another replica holds
    # its only shared slot: the run goes to "w" in the same attempt.
    held = await slots.take("a", 1)
    assert held
    pool = BackendPool([spec("a", "http://127.0.0.1:9"), spec("w", worker.url, 1)])
    try:
        outcome = await replica(pool, session, slots).run("sd", "tiny", gen(), "req_s4")
    finally:
        await slots.give_back("a", held)
    assert outcome.backend_id == "w" and outcome.attempts == 1
    assert pool.in_flight() == 0 and pool.backends["a"].failed == 0


async def test_the_slot_is_given_back_on_failure_cancel_and_exception(
    worker: WorkerProcess, session: aiohttp.ClientSession, slots: SlotKeeper
) -> None:
    # Failure: nothing listens, every attempt fails (and gives its slot back).
    dead = BackendPool([spec("dead", "http://127.0.0.1:9")])
    with pytest.raises(BackendError, match="could not be reached"):
        await replica(dead, session, slots).run("sd", "tiny", gen(), "req_s5")
    assert slots.held("dead") == frozenset()

    pool = BackendPool([spec("w", worker.url)])
    # The caller's own cancellation, mid-run.
    started = asyncio.Event()

    async def note_start(_event: Progress) -> None:
        started.set()

    task = asyncio.create_task(
        replica(pool, session, slots).run("sd", "tiny", gen(steps=500), "req_s6", note_start)
    )
    await asyncio.wait_for(started.wait(), 30)
    assert len(slots.held("w")) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slots.held("w") == frozenset() and pool.in_flight() == 0
    await asyncio.to_thread(wait_idle, worker)

    # An exception in the progress handler.
    async def explode(_: Progress) -> None:
        raise RuntimeError("observer bug")

    with pytest.raises(RuntimeError, match="observer bug"):
        await replica(pool, session, slots).run("sd", "tiny", gen(steps=50), "req_s7", explode)
    assert slots.held("w") == frozenset() and pool.in_flight() == 0
    # Every slot came back to the store itself too: a capacity-1 take succeeds.
    token = await slots.take("w", 1)
    assert token
    await slots.give_back("w", token)

"""Dispatch against real backends on 127.0.0.1: the reference worker, a backend process that
fails every inference with a 500, and an endpoint where nothing listens."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import pytest_asyncio

from render_gateway.inference.backend import BackendError, Cancelled, Progress
from render_gateway.inference.kserve_client import KServeClient
from render_gateway.scheduling.backend_pool import BackendPool, BackendSpec
from render_gateway.scheduling.breaker import BreakerConfig, BreakerState, CircuitBreaker
from render_gateway.scheduling.dispatch import Dispatcher, NoCapacity, RetryPolicy

from support.clock import FakeClock
from support.processes import WorkerProcess, free_port, stop_process, wait_until_ready
from support.worker_api import stats, wait_idle

FAST = RetryPolicy(max_attempts=3, base_delay_seconds=0.01, max_delay_seconds=0.02)


@pytest.fixture(scope="module")
def failing_backend() -> Iterator[str]:
    """A separate process that answers every inference with a 500."""
    port = free_port()
    script = Path(__file__).resolve().parents[1] / "support" / "failing_backend.py"
    process = subprocess.Popen([sys.executable, str(script), str(port)])
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(process, url + "/v2/health/ready", None, 30)
    yield url
    stop_process(process)


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker)


def spec(backend_id: str, endpoint: str, capacity: int = 1, streaming: bool = True) -> BackendSpec:
    return BackendSpec(backend_id, endpoint, "sd", {"tiny": "demo"}, capacity, streaming=streaming)


def dispatcher(
    pool: BackendPool, session: aiohttp.ClientSession, policy: RetryPolicy = FAST
) -> Dispatcher:
    return Dispatcher(pool, lambda s: KServeClient(session, s.endpoint), policy, random.Random(1))


def gen(**fields: object) -> bytes:
    return orjson.dumps({"prompt": "a harbour", **fields})


def test_least_loaded_selection_and_capacity() -> None:
    pool = BackendPool([spec("a", "http://a", 2), spec("b", "http://b", 1)])
    first = pool.acquire("sd", "tiny")
    second = pool.acquire("sd", "tiny")
    third = pool.acquire("sd", "tiny")
    assert first is not None and second is not None and third is not None
    assert {first.backend.spec.id, second.backend.spec.id} == {"a", "b"}
    assert pool.acquire("sd", "tiny") is None  # 2 + 1 slots taken
    assert first.model == "demo"
    for lease in (first, second, third):
        lease.release()
        lease.release()  # releasing twice is harmless
    assert pool.in_flight() == 0
    with pytest.raises(Exception, match="no backend"):
        pool.acquire("flux", "schnell")


async def test_stream_success_reports_progress_and_frees_the_slot(
    worker: WorkerProcess, session: aiohttp.ClientSession
) -> None:
    pool = BackendPool([spec("w", worker.url)])
    steps: list[int] = []

    async def record(event: Progress) -> None:
        steps.append(event.step)

    outcome = await dispatcher(pool, session).run(
        "sd", "tiny", gen(steps=4, seed=1), "req_d1", record
    )
    assert not outcome.cancelled and outcome.attempts == 1 and outcome.backend_id == "w"
    assert steps == [1, 2, 3, 4]
    assert pool.in_flight() == 0 and pool.backends["w"].served == 1


async def test_infer_mode_for_non_streaming_backends(
    worker: WorkerProcess, session: aiohttp.ClientSession
) -> None:
    pool = BackendPool([spec("w", worker.url, streaming=False)])
    outcome = await dispatcher(pool, session).run("sd", "tiny", gen(seed=2), "req_d2")
    assert not outcome.cancelled and pool.in_flight() == 0


async def test_retriable_failure_retries_on_another_backend(
    worker: WorkerProcess, session: aiohttp.ClientSession, failing_backend: str
) -> None:
    pool = BackendPool([spec("a-failing", failing_backend), spec("b-worker", worker.url)])
    outcome = await dispatcher(pool, session).run("sd", "tiny", gen(seed=3), "req_d3")
    assert outcome.backend_id == "b-worker" and outcome.attempts == 2
    assert pool.backends["a-failing"].failed == 1 and pool.in_flight() == 0


async def test_breaker_opens_then_probes_then_closes(
    worker: WorkerProcess, session: aiohttp.ClientSession, failing_backend: str
) -> None:
    clock = FakeClock()
    config = BreakerConfig(
        failure_rate_threshold=0.5, minimum_calls=2, open_seconds=10, half_open_successes=1
    )
    pool = BackendPool(
        [spec("a-failing", failing_backend), spec("b-worker", worker.url)],
        config,
        lambda c: CircuitBreaker(c, clock),
    )
    run = dispatcher(pool, session).run
    for n in range(2):
        await run("sd", "tiny", gen(seed=n), f"req_b{n}")
    breaker = pool.backends["a-failing"].breaker
    assert breaker.state is BreakerState.open
    skipped = await run("sd", "tiny", gen(seed=5), "req_b5")
    assert skipped.attempts == 1 and skipped.backend_id == "b-worker"  # open: not even tried
    clock.now += 11
    assert breaker.state is BreakerState.half_open
    probed = await run("sd", "tiny", gen(seed=6), "req_b6")
    assert probed.attempts == 2  # the single probe went to the failing backend, then a retry
    assert breaker.state is BreakerState.open
    assert pool.in_flight() == 0


async def test_non_retriable_error_is_not_retried(
    worker: WorkerProcess, session: aiohttp.ClientSession
) -> None:
    pool = BackendPool([spec("w", worker.url)])
    with pytest.raises(BackendError) as refused:
        await dispatcher(pool, session).run("sd", "tiny", gen(task="t2v"), "req_d4")
    assert refused.value.status == 400 and not refused.value.retriable
    assert pool.in_flight() == 0 and pool.backends["w"].failed == 0


async def test_dead_backend_exhausts_retries(session: aiohttp.ClientSession) -> None:
    pool = BackendPool([spec("dead", f"http://127.0.0.1:{free_port()}", capacity=3)])
    with pytest.raises(BackendError) as down:
        await dispatcher(pool, session).run("sd", "tiny", gen(), "req_d5")
    assert down.value.retriable
    assert pool.backends["dead"].failed == 3 and pool.in_flight() == 0


async def test_no_capacity_is_reported(
    worker: WorkerProcess, session: aiohttp.ClientSession
) -> None:
    pool = BackendPool([spec("w", worker.url)])
    held = pool.acquire("sd", "tiny")
    with pytest.raises(NoCapacity):
        await dispatcher(pool, session).run("sd", "tiny", gen(), "req_d6")
    assert held is not None
    held.release()
    assert pool.in_flight() == 0


async def test_a_backend_busy_with_another_replicas_run_is_no_capacity_not_a_failure(
    worker: WorkerProcess, session: aiohttp.ClientSession
) -> None:
    # Another replica's run holds the worker's only slot; this pool thinks the slot is free
    # (each replica counts a backend's capacity for itself): every attempt answers busy.
    other_replica = KServeClient(session, worker.url)
    stream = other_replica.generate_stream("demo", gen(steps=500), "req_busy_other")
    assert isinstance(await stream.__anext__(), Progress)  # type: ignore[attr-defined]
    pool = BackendPool([spec("w", worker.url)], BreakerConfig(minimum_calls=2))
    try:
        for attempt in range(3):  # 9 busy answers, past minimum_calls: none counts as failing
            with pytest.raises(NoCapacity, match="busy"):
                await dispatcher(pool, session).run("sd", "tiny", gen(), f"req_busy_{attempt}")
        assert pool.in_flight() == 0
        backend = pool.backends["w"]
        assert backend.breaker.state is BreakerState.closed and backend.failed == 0
    finally:
        assert await other_replica.cancel("demo", "req_busy_other")
        async for _ in stream:  # type: ignore[attr-defined]
            pass


async def test_cancel_returns_the_backends_signed_claim(
    worker: WorkerProcess, session: aiohttp.ClientSession
) -> None:
    pool = BackendPool([spec("w", worker.url)])
    cancel = asyncio.Event()

    async def progress(event: Progress) -> None:
        if event.step == 2:
            cancel.set()

    outcome = await dispatcher(pool, session).run(
        "sd", "tiny", gen(steps=500), "req_d7", progress, cancel
    )
    assert outcome.cancelled and isinstance(outcome.result, Cancelled)
    assert "usage_claim" in outcome.result.parameters
    assert pool.in_flight() == 0


async def test_slot_released_when_the_caller_is_cancelled(
    worker: WorkerProcess, session: aiohttp.ClientSession
) -> None:
    pool = BackendPool([spec("w", worker.url)])
    before = stats(worker)
    started = asyncio.Event()

    async def note_start(_event: Progress) -> None:
        started.set()

    task = asyncio.create_task(
        dispatcher(pool, session).run("sd", "tiny", gen(steps=500), "req_d8", note_start)
    )
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.in_flight() == 0
    after = await asyncio.to_thread(wait_idle, worker)
    assert after["cancelled"] == before["cancelled"] + 1  # closing the stream stopped the run


async def test_slot_released_when_progress_handler_raises(
    worker: WorkerProcess, session: aiohttp.ClientSession
) -> None:
    pool = BackendPool([spec("w", worker.url)])

    async def explode(_: Progress) -> None:
        raise RuntimeError("observer bug")

    with pytest.raises(RuntimeError, match="observer bug"):
        await dispatcher(pool, session).run("sd", "tiny", gen(steps=50), "req_d9", explode)
    assert pool.in_flight() == 0


async def test_run_timeout_is_final_and_frees_the_slot(
    worker: WorkerProcess, session: aiohttp.ClientSession
) -> None:
    """A run that used all its time is not sent again (issue 13: three attempts ran the model
    three times, the last after the job had failed)."""
    pool = BackendPool([spec("w", worker.url)])
    policy = RetryPolicy(max_attempts=3, run_timeout_seconds=0.3)
    cancelled_before = stats(worker)["cancelled"]
    with pytest.raises(BackendError) as timed_out:
        await dispatcher(pool, session, policy).run("sd", "tiny", gen(steps=500), "req_d10")
    assert timed_out.value.code == "timeout" and not timed_out.value.retriable
    assert pool.in_flight() == 0
    wait_idle(worker)
    assert stats(worker)["cancelled"] == cancelled_before + 1  # one run, stopped

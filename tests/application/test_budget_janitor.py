"""The hold janitor: a hold that no request will ever settle (its process was killed between
the reserve and the job's commit, or between a queued job's cancel and its release) is released
by one pass, and a live job's hold is not. Run on the embedded job store with the in-process
ledger and on one real redis-server for both (the replicas' shape)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from render_gateway.application.budget_janitor import (
    MIN_GRACE_SECONDS,
    HoldJanitor,
    hold_grace_seconds,
)
from render_gateway.application.budget_settler import BudgetSettler
from render_gateway.core.budgets import BudgetLimit
from render_gateway.core.ids import new_job_id, new_request_id
from render_gateway.core.jobs import Job, JobStatus
from render_gateway.core.lanes import Lane
from render_gateway.core.months import month_of
from render_gateway.core.pricing import PlanPrices, PriceTable
from render_gateway.metering.estimates import CostEstimator
from render_gateway.metering.meter import Meter
from render_gateway.metering.work import Work
from render_gateway.scheduling.dispatch import RetryPolicy
from render_gateway.stores.budgets import BudgetStore, open_budget_store
from render_gateway.stores.jobs import JobStore, open_job_store
from render_gateway.stores.redis_budgets import RedisBudgetStore
from render_gateway.stores.redis_client import key, open_redis
from render_gateway.stores.redis_jobs import open_redis_job_store

from support.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]

QUEUED = frozenset({JobStatus.queued})
RUNNING = frozenset({JobStatus.running})
WORK = Work("sd", "tiny", "t2i", 4, 1.0)
GRACE = 300.0
EVERYTHING = frozenset({"sd/tiny/"})


@dataclass
class Parts:
    jobs: JobStore
    budgets: BudgetStore
    meter: Meter

    def janitor(self, *, page: int = 500, every_seconds: float = 60.0) -> HoldJanitor:
        # Its clock is past every hold's grace: each hold made so far counts as old.
        return HoldJanitor(
            self.budgets, self.jobs, GRACE, page=page, every_seconds=every_seconds,
            clock=lambda: time.time() + GRACE + 1,
        )  # fmt: skip

    async def held(self) -> float:
        return (await self.meter.state("c1", "default", month_of(time.time()))).reserved.gpu_seconds

    async def spent(self) -> float:
        return (await self.meter.state("c1", "default", month_of(time.time()))).spent.gpu_seconds


@pytest.fixture(params=["embedded", "redis"])
async def parts(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Parts]:
    budgets: BudgetStore
    jobs: JobStore
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        fresh = uuid.uuid4().hex
        jobs = open_redis_job_store(
            server.url, namespace=key("jobs", fresh), usage_namespace=key("usage", fresh)
        )
        budgets = RedisBudgetStore(open_redis(server.url), prefix=key("budgets", fresh))
    else:
        jobs = open_job_store(f"sqlite://{quote(str(tmp_path / 'jobs.db'))}")
        budgets = open_budget_store("memory://")
    await jobs.open()
    prices = PriceTable({"default": PlanPrices(0.001, {})})
    meter = Meter(prices, budgets, lambda _c, _p: BudgetLimit(100.0), CostEstimator(1.0))
    try:
        yield Parts(jobs, budgets, meter)
    finally:
        await jobs.close()
        await budgets.close()


async def admitted_job(parts: Parts) -> Job:
    """A job admitted against the budget and stored queued."""
    now = time.time()
    job = Job(new_job_id(), "c1", Lane.normal, {"family": "sd", "model": "tiny"}, now)
    await parts.meter.admit(job.id, "c1", "default", WORK, now)
    await parts.jobs.submit(job, max_queued_for_customer=100, max_queued_total=100)
    return job


async def leaked_hold(parts: Parts) -> str:
    """A reserve whose process died before the job was stored (or a sync request's, before
    its record): no job, no record."""
    name = new_job_id()
    await parts.meter.admit(name, "c1", "default", WORK, time.time())
    return name


async def test_a_leaked_hold_is_released_by_one_pass_and_a_live_jobs_is_not(parts: Parts) -> None:
    queued = await admitted_job(parts)
    running = await admitted_job(parts)
    claimed = await parts.jobs.claim(
        time.time(), runnable=EVERYTHING, served=EVERYTHING, holder="h", lease_seconds=30
    )
    assert claimed is not None and claimed.id == queued.id  # the lane's head runs
    leaked = await leaked_hold(parts)
    sync_leaked = new_request_id()
    await parts.meter.admit(sync_leaked, "c1", "default", WORK, time.time())
    per_hold = await parts.held() / 4

    janitor = parts.janitor()
    assert await janitor.sweep() == 2
    assert janitor.released == 2
    assert await parts.held() == pytest.approx(2 * per_hold)  # the two jobs' holds stand
    assert await parts.budgets.open_reservations() == 2
    remaining = {hold.key for hold in await parts.budgets.holds_older_than(time.time() + 1)}
    assert remaining == {queued.id, running.id}
    assert leaked not in remaining and sync_leaked not in remaining
    assert await parts.spent() == 0.0  # released, never billed
    assert await janitor.sweep() == 0  # a second pass finds nothing more


async def test_a_young_hold_is_left_alone(parts: Parts) -> None:
    await leaked_hold(parts)
    janitor = HoldJanitor(parts.budgets, parts.jobs, GRACE)  # the real clock: made just now
    assert await janitor.sweep() == 0
    assert await parts.budgets.open_reservations() == 1


async def test_a_job_cancelled_while_queued_whose_release_was_lost_is_released(
    parts: Parts,
) -> None:
    job = await admitted_job(parts)
    cancelled = await parts.jobs.finish(job.id, JobStatus.cancelled, time.time(), expect=QUEUED)
    assert cancelled is not None  # the commit is in; the process died before the release
    assert await parts.held() > 0
    assert await parts.janitor().sweep() == 1
    assert await parts.held() == 0.0
    assert await parts.spent() == 0.0


async def test_a_terminal_jobs_record_is_still_billed_once_after_its_hold_is_released(
    parts: Parts,
) -> None:
    job = await admitted_job(parts)
    now = time.time()
    claimed = await parts.jobs.claim(
        now, runnable=EVERYTHING, served=EVERYTHING, holder="dead", lease_seconds=30
    )
    assert claimed is not None
    record = parts.meter.record(
        request_id=f"req-{job.id}", customer_id="c1", plan="default", tier="async",
        modality="image", family="sd", model="tiny", created_at=now, started_at=now,
        ended_at=now + 1, outcome="success", parameters={"gpu_seconds": 0.75}, job_id=job.id,
    )  # fmt: skip
    ended = await parts.jobs.finish(
        job.id, JobStatus.complete, now + 1, expect=RUNNING, usage=record, holder="dead"
    )
    assert ended is not None
    assert await parts.janitor().sweep() == 1  # before the budget settler got to it
    settler = BudgetSettler(parts.jobs.usage_log, parts.meter.settle_budget)
    assert await settler.catch_up() == 1
    assert settler.settled == 1
    assert await parts.held() == 0.0
    assert await parts.spent() == pytest.approx(0.75)
    assert await parts.janitor().sweep() == 0


async def test_a_pass_walks_every_page_releasing_between_live_holds(parts: Parts) -> None:
    live, leaked = [], []
    for _ in range(4):
        live.append((await admitted_job(parts)).id)
        leaked.append(await leaked_hold(parts))
        leaked.append(await leaked_hold(parts))
    assert await parts.janitor(page=3).sweep() == 8
    remaining = {hold.key for hold in await parts.budgets.holds_older_than(time.time() + 1)}
    assert remaining == set(live)


async def test_the_janitor_runs_its_passes_until_stopped(parts: Parts) -> None:
    await leaked_hold(parts)
    janitor = parts.janitor(every_seconds=0.05)
    janitor.start()
    try:
        deadline = time.monotonic() + 10
        # The task bumps a counter and has no event to wait on: poll it, bounded.
        while janitor.released == 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        await janitor.stop()
    assert janitor.released == 1
    assert await parts.budgets.open_reservations() == 0


def test_the_grace_is_twice_the_longest_sync_request_and_at_least_the_minimum() -> None:
    policy = RetryPolicy(max_attempts=3, max_delay_seconds=5.0, run_timeout_seconds=600.0)
    assert hold_grace_seconds(policy) == 2 * (3 * (600.0 + 30.0) + 2 * 5.0)
    short = RetryPolicy(max_attempts=1, run_timeout_seconds=10.0, cancel_grace_seconds=1.0)
    assert hold_grace_seconds(short) == MIN_GRACE_SECONDS

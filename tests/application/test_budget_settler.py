"""The budgets' backstop: a request whose process died between its end's commit (status + usage
record) and its in-line budget settle is settled from the usage stream, once. Run on the
embedded job store with the in-process ledger and on one real redis-server for both (the
replicas' shape)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from render_gateway.application.budget_settler import BudgetSettler, budget_key
from render_gateway.core.budgets import BudgetLimit
from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job, JobStatus
from render_gateway.core.lanes import Lane
from render_gateway.core.months import month_of, previous_month
from render_gateway.core.pricing import PlanPrices, PriceTable
from render_gateway.metering.estimates import CostEstimator
from render_gateway.metering.meter import Meter
from render_gateway.metering.work import Work
from render_gateway.stores.budgets import BudgetStore, open_budget_store
from render_gateway.stores.jobs import JobStore, open_job_store
from render_gateway.stores.redis_budgets import RedisBudgetStore
from render_gateway.stores.redis_client import key, open_redis
from render_gateway.stores.redis_jobs import open_redis_job_store
from render_gateway.stores.usage_log import BUDGET_GROUP, LoggedUsage, UsageStream

from support.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]

RUNNING = frozenset({JobStatus.running})
WORK = Work("sd", "tiny", "t2i", 4, 1.0)


@dataclass
class Parts:
    jobs: JobStore
    meter: Meter


@pytest.fixture(params=["embedded", "redis"])
async def parts(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Parts]:
    budgets: BudgetStore
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
    meter = Meter(prices, budgets, lambda _c, _p: BudgetLimit(10.0), CostEstimator(1.0))
    yield Parts(jobs, meter)
    await jobs.close()
    await budgets.close()


async def ended_without_its_settle(parts: Parts, gpu_seconds: float) -> Job:
    """A job admitted against the budget, run, and ended in the job store (status + record in
    one commit); the process then died before ``Settlement`` settled its budget."""
    now = time.time()
    job = Job(new_job_id(), "c1", Lane.normal, {"family": "sd", "model": "tiny"}, now)
    await parts.meter.admit(job.id, "c1", "default", WORK, now)
    await parts.jobs.submit(job, max_queued_for_customer=100, max_queued_total=100)
    everything = frozenset({"sd/tiny/"})
    claimed = await parts.jobs.claim(
        now, runnable=everything, served=everything, holder="dead", lease_seconds=30
    )
    assert claimed is not None and claimed.id == job.id
    record = parts.meter.record(
        request_id=f"req-{job.id}", customer_id="c1", plan="default", tier="async",
        modality="image", family="sd", model="tiny", created_at=now, started_at=now,
        ended_at=now + 1, outcome="success", parameters={"gpu_seconds": gpu_seconds},
        job_id=job.id,
    )  # fmt: skip
    ended = await parts.jobs.finish(
        job.id, JobStatus.complete, now + 1, expect=RUNNING, usage=record, holder="dead"
    )
    assert ended is not None
    return ended


async def test_a_settle_lost_with_its_process_is_made_from_the_stream_once(parts: Parts) -> None:
    job = await ended_without_its_settle(parts, gpu_seconds=0.75)
    month = month_of(time.time())
    before = await parts.meter.state("c1", "default", month)
    assert before.reserved.gpu_seconds > 0  # the hold still stands
    assert before.spent.gpu_seconds == 0.0

    settler = BudgetSettler(parts.jobs.usage_log, parts.meter.settle_budget)
    assert await settler.catch_up() == 1
    after = await parts.meter.state("c1", "default", month)
    assert after.reserved.gpu_seconds == 0.0
    assert after.spent.gpu_seconds == pytest.approx(0.75)
    assert settler.settled == 1
    assert parts.jobs.usage_log.acked(BUDGET_GROUP) == parts.jobs.usage_log.head()

    # The group's position moved: a restarted consumer reads nothing again, and a replay of
    # the in-line settle (the process was only slow, not dead) bills nothing twice.
    assert await BudgetSettler(parts.jobs.usage_log, parts.meter.settle_budget).catch_up() == 0
    logged = parts.jobs.usage_log.read_group("clickhouse", 10)
    assert [budget_key(entry.record) for entry in logged] == [job.id]
    assert not await parts.meter.settle_budget(job.id, logged[0].record)
    final = await parts.meter.state("c1", "default", month)
    assert final.spent.gpu_seconds == pytest.approx(0.75)


async def test_an_in_line_settle_first_leaves_the_backstop_nothing(parts: Parts) -> None:
    await ended_without_its_settle(parts, gpu_seconds=0.5)
    (entry,) = parts.jobs.usage_log.read_group("clickhouse", 10)
    await parts.meter.settled(budget_key(entry.record), entry.record)  # Settlement's settle
    settler = BudgetSettler(parts.jobs.usage_log, parts.meter.settle_budget)
    assert await settler.catch_up() == 1
    assert settler.settled == 0  # read and acked, but it had been settled
    state = await parts.meter.state("c1", "default", month_of(time.time()))
    assert state.spent.gpu_seconds == pytest.approx(0.5)


async def test_records_older_than_last_month_are_acked_without_a_settle(parts: Parts) -> None:
    await ended_without_its_settle(parts, gpu_seconds=0.5)
    calls: list[str] = []

    async def settle(key: str, record: object) -> bool:
        calls.append(key)
        return True

    far_ahead = time.time() + 80 * 86400  # two months on: the record's month is long closed
    settler = BudgetSettler(parts.jobs.usage_log, settle, clock=lambda: far_ahead)
    assert await settler.catch_up() == 1
    assert calls == []


def test_previous_month_crosses_the_year() -> None:
    assert previous_month("2026-01") == "2025-12"
    assert previous_month("2026-12") == "2026-11"


class CountedReads:
    """The store's usage stream, counting the backstop's reads (every call goes through)."""

    def __init__(self, stream: UsageStream) -> None:
        self._stream, self.reads = stream, 0

    def read_group(self, group: str, count: int) -> list[LoggedUsage]:
        self.reads += 1
        return self._stream.read_group(group, count)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


async def test_a_burst_of_commits_is_read_in_one_batch_and_all_settled(parts: Parts) -> None:
    """Eight commits (the budget holds ten), each notifying the running backstop: it reads
    them together (not once per commit: the reads were a share of every request's CPU), and
    settles every one."""
    stream = CountedReads(parts.jobs.usage_log)
    settler = BudgetSettler(
        stream,
        parts.meter.settle_budget,
    )  # type: ignore[arg-type]
    settler.start()
    await asyncio.sleep(0.05)  # its first catch-up (nothing yet) is done
    reads_before = stream.reads
    for _ in range(8):
        await ended_without_its_settle(parts, gpu_seconds=0.1)
        settler.notify()
    deadline = time.monotonic() + 5
    while parts.jobs.usage_log.acked(BUDGET_GROUP) != parts.jobs.usage_log.head():
        assert time.monotonic() < deadline, "the backstop did not catch up"
        await asyncio.sleep(0.02)
    await settler.stop()
    assert settler.settled == 8
    # One batch read plus the empty read that ends a catch-up, maybe one more round if the
    # burst straddled a wake: far fewer than one per commit.
    assert stream.reads - reads_before <= 4
    state = await parts.meter.state("c1", "default", month_of(time.time()))
    assert state.spent.gpu_seconds == pytest.approx(0.8)

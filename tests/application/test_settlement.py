"""The application layer in process: the real app and use cases on embedded and in-memory
stores, driven through an ASGI test client (no server process, no worker). Its backend is a
closed port on 127.0.0.1, so jobs stay queued until a test claims them itself.

What is attacked here: one Settlement ends a job exactly once whichever paths race to end it;
a cancel that reaches no run is not reported as done; runs lost with their process are
recovered (requeued while retries last, else failed and billed) through the same settlement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from render_gateway.api.app import create_app
from render_gateway.application.services import GatewayServices
from render_gateway.application.settle import FOLLOW_UP_GRACE_S, QUEUED, RUNNING, Ending
from render_gateway.config import (
    BackendConfig,
    CatalogEntryConfig,
    GatewayConfig,
    ReconcileConfig,
    WebhooksConfig,
)
from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job, JobStatus, route_key
from render_gateway.core.months import month_of
from render_gateway.stores.unavailable import StoreUnavailable

from support.memory_stores import memory_stores
from support.processes import free_port, stop_process
from support.redis_server import start_redis

BODY = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": "a fox"}


def config_for(tmp_path: Path, **overrides: Any) -> GatewayConfig:
    # Only the API and the scheduler: no ClickHouse writer, batcher or reconciler here.
    settings: dict[str, Any] = {"roles": ["api", "scheduler"], **overrides}
    return GatewayConfig(
        data_dir=tmp_path,
        local_demo_worker=False,
        anonymous_plan="default",
        backends=[
            BackendConfig(
                id="gone",
                endpoint=f"http://127.0.0.1:{free_port()}",
                family="sd",
                models={"tiny": "demo"},
            )
        ],
        models=[CatalogEntryConfig(modality="image", family="sd", model="tiny", tasks=["t2i"])],
        reconcile=ReconcileConfig(enabled=False),
        webhooks=WebhooksConfig(allow_http=True, allow_private_addresses=True),
        stores=memory_stores(),
        **settings,
    )


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[GatewayServices, httpx.AsyncClient]]:
    services = await GatewayServices.start(config_for(tmp_path))
    app = create_app(services.config, started=services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield services, client
    await services.stop()


async def submit(client: httpx.AsyncClient, **fields: Any) -> str:
    response = await client.post("/queue", json={**BODY, **fields})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def claim_elsewhere(services: GatewayServices, job_id: str) -> Job:
    """Claim the job as another process would (that process then dies, or runs it)."""
    stored = await services.stores.jobs.get(job_id)
    assert stored is not None
    key = route_key(stored.request)
    claimed = await services.stores.jobs.claim(
        0.0, runnable=frozenset({key}), served=frozenset({key}), holder="other", lease_seconds=30
    )
    assert claimed is not None and claimed.id == job_id
    return claimed


async def test_a_queued_cancel_settles_once_with_its_webhook_and_budget(
    gateway: tuple[GatewayServices, httpx.AsyncClient],
) -> None:
    services, client = gateway
    job_id = await submit(client, webhook="http://127.0.0.1:1/hook")
    assert await services.stores.budgets.open_reservations() == 1
    first, second = await asyncio.gather(
        client.delete(f"/jobs/{job_id}"), client.delete(f"/jobs/{job_id}")
    )
    assert sorted([first.status_code, second.status_code]) == [204, 409]
    assert services.settlement.finished["cancelled"] == 1
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "cancelled"
    assert await services.stores.budgets.open_reservations() == 0  # the hold is released
    assert await services.stores.webhooks.pending() == 1  # one delivery, stored
    events = [e async for e in services.stores.events.follow(job_id)]
    assert [(e.event, e.data["code"]) for e in events] == [("error", "cancelled")]


async def test_two_paths_racing_to_end_a_job_settle_it_once(
    gateway: tuple[GatewayServices, httpx.AsyncClient],
) -> None:
    """A cancel and a ttl expiry (or any two ends) of the same queued job: one wins, the other
    does nothing at all — no second event, webhook, count or budget settlement."""
    services, client = gateway
    job_id = await submit(client, webhook="http://127.0.0.1:1/hook")
    job = await services.stores.jobs.get(job_id)
    assert job is not None
    settle = services.settlement.settle
    results = await asyncio.gather(
        *(settle(job, Ending.cancelled(), 1.0, expect=QUEUED) for _ in range(5))
    )
    assert sum(r is not None for r in results) == 1
    assert services.settlement.finished["cancelled"] == 1
    assert await services.stores.webhooks.pending() == 1
    assert len([e async for e in services.stores.events.follow(job_id)]) == 1
    # Once ended, a run's end (expect running) does nothing either.
    assert await settle(job, Ending.cancelled(), 2.0, expect=RUNNING) is None


async def test_a_cancel_that_reaches_no_run_is_accepted_not_done(
    gateway: tuple[GatewayServices, httpx.AsyncClient],
) -> None:
    """Running in a process that died: no run answers. The DELETE says so (202, not 204), the
    cancel is kept on the job, and the recovery cancels the job instead of running it again."""
    services, client = gateway
    job_id = await submit(client)
    await claim_elsewhere(services, job_id)
    response = await client.delete(f"/jobs/{job_id}")
    assert response.status_code == 202, response.text
    assert response.json() == {"id": job_id, "status": "running", "cancel": "recorded"}
    assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "running"
    lost = await services.stores.jobs.get(job_id)
    assert lost is not None and lost.cancel_requested
    assert await services.runner.recover([lost]) == (0, 0)
    assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "cancelled"
    assert (await client.delete(f"/jobs/{job_id}")).status_code == 409


async def test_lost_runs_are_requeued_while_retries_last_then_fail_billed(
    gateway: tuple[GatewayServices, httpx.AsyncClient],
) -> None:
    services, client = gateway
    job_id = await submit(client)
    retries = services.config.max_job_retries
    for attempt in range(retries):
        lost = await claim_elsewhere(services, job_id)
        assert await services.runner.recover([lost]) == (1, 0)
        again = await services.stores.jobs.get(job_id)
        assert again is not None and again.status is JobStatus.queued
        assert again.retries == attempt + 1
    head = services.stores.jobs.usage_log.head()
    lost = await claim_elsewhere(services, job_id)
    assert await services.runner.recover([lost]) == (0, 1)
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "error"
    assert job["error"] == {
        "code": "interrupted",
        "message": "the gateway stopped while the job was running",
        "retriable": True,
    }
    assert job["usage"]["status"] == "error"  # a usage record, committed with the status
    assert services.stores.jobs.usage_log.head() == head + 1
    assert await services.stores.budgets.open_reservations() == 0


async def test_an_end_whose_follow_ups_never_ran_gets_them_from_the_sweep(
    gateway: tuple[GatewayServices, httpx.AsyncClient],
) -> None:
    """A process killed right after the commit of an end: the job is cancelled in the store,
    but nobody published its terminal event, released its budget hold or enqueued its webhook.
    The commit listed it as unfollowed; a sweep past the grace runs those follow-ups, once."""
    services, client = gateway
    job_id = await submit(client, webhook="http://127.0.0.1:1/hook")
    jobs = services.stores.jobs
    ended = await jobs.finish(job_id, JobStatus.cancelled, time.time(), expect=QUEUED)
    assert ended is not None  # the commit, and then the process is gone
    assert not await services.stores.events.has_log(job_id)
    assert await services.stores.budgets.open_reservations() == 1
    assert await services.stores.webhooks.pending() == 0
    settlement = services.settlement
    assert await settlement.follow_up_missed(time.time()) == 0  # within the grace: not yet
    later = time.time() + FOLLOW_UP_GRACE_S + 1
    assert await settlement.follow_up_missed(later) == 1
    events = [e async for e in services.stores.events.follow(job_id)]
    assert [(e.event, e.data["code"]) for e in events] == [("error", "cancelled")]
    assert await services.stores.budgets.open_reservations() == 0
    assert await services.stores.webhooks.pending() == 1
    assert await jobs.unfollowed(later, 10) == []
    assert await settlement.follow_up_missed(later) == 0  # confirmed: nothing runs twice


async def test_a_webhook_the_policy_now_refuses_does_not_hold_back_any_follow_up(
    gateway: tuple[GatewayServices, httpx.AsyncClient],
) -> None:
    """A job whose webhook the sender refuses by its form (stored before the policy changed;
    here written to the store directly, which keeps what it is given) still gets its event and
    is confirmed by the sweep, and the job that ended after it in the same sweep too."""
    services, client = gateway
    jobs = services.stores.jobs
    template = await jobs.get(await submit(client))
    assert template is not None
    poisoned = template.evolve(id=new_job_id(), webhook="ftp://127.0.0.1/hook")
    await jobs.submit(poisoned, max_queued_for_customer=100, max_queued_total=100)
    plain = await submit(client, webhook="http://127.0.0.1:1/hook")
    await jobs.finish(poisoned.id, JobStatus.cancelled, time.time() - 1, expect=QUEUED)
    await jobs.finish(plain, JobStatus.cancelled, time.time(), expect=QUEUED)
    later = time.time() + FOLLOW_UP_GRACE_S + 1
    assert await services.settlement.follow_up_missed(later) == 2
    assert await jobs.unfollowed(later, 10) == []  # the queued template never ended
    for done in (poisoned.id, plain):
        events = [e async for e in services.stores.events.follow(done)]
        assert [e.event for e in events] == ["error"], done
    assert await services.stores.webhooks.pending() == 1  # the plain one; the refused: none


async def test_follow_ups_that_ran_and_run_again_change_nothing(
    gateway: tuple[GatewayServices, httpx.AsyncClient],
) -> None:
    """A settle that did its follow-ups but died before confirming them (or a sweep on another
    replica racing it): running them again publishes no second terminal event, enqueues no
    second webhook, settles no budget twice."""
    services, client = gateway
    job_id = await submit(client, webhook="http://127.0.0.1:1/hook")
    assert (await client.delete(f"/jobs/{job_id}")).status_code == 204
    jobs = services.stores.jobs
    assert await jobs.unfollowed(float("inf"), 10) == []  # settle confirmed its follow-ups
    # Put it back on the list, as a settle cut down before followed_up would have left it.
    ended = await jobs.get(job_id)
    assert ended is not None and ended.status is JobStatus.cancelled
    fresh = await submit(client, webhook="http://127.0.0.1:1/hook")
    await jobs.finish(fresh, JobStatus.cancelled, time.time(), expect=QUEUED)
    await services.settlement.settle(ended, Ending.cancelled(), time.time(), expect=QUEUED)
    later = time.time() + FOLLOW_UP_GRACE_S + 1
    assert [j.id for j in await jobs.unfollowed(later, 10)] == [fresh]
    assert await services.settlement.follow_up_missed(later) == 1
    for done in (job_id, fresh):
        events = [e async for e in services.stores.events.follow(done)]
        assert [e.event for e in events] == ["error"], done
    assert await services.stores.webhooks.pending() == 2  # one per job, not one per follow-up
    assert await services.stores.budgets.open_reservations() == 0


async def test_follow_ups_cut_short_by_an_unreachable_event_bus_run_once_it_is_back(
    tmp_path: Path,
) -> None:
    """The settling process lives, but its event bus (Redis) is down at the moment of the end:
    the cancel is committed and answered, the terminal event waits for the sweep, which
    publishes it once Redis is back."""
    server = start_redis(tmp_path / "redis")
    base = config_for(tmp_path)
    config = base.model_copy(
        update={"stores": base.stores.model_copy(update={"events": server.url})}
    )
    services = await GatewayServices.start(config)
    app = create_app(services.config, started=services)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            job_id = await submit(client)
            stop_process(server.process)
            assert (await client.delete(f"/jobs/{job_id}")).status_code == 204
            ended = await services.stores.jobs.get(job_id)
            assert ended is not None and ended.status is JobStatus.cancelled
            later = time.time() + FOLLOW_UP_GRACE_S + 1
            with pytest.raises(StoreUnavailable):  # still down: it stays unfollowed
                await services.settlement.follow_up_missed(later)
            assert [j.id for j in await services.stores.jobs.unfollowed(later, 10)] == [job_id]
            server = start_redis(tmp_path / "redis", server.port)
            assert await services.settlement.follow_up_missed(later) == 1
            events = [e async for e in services.stores.events.follow(job_id)]
            assert [(e.event, e.data["code"]) for e in events] == [("error", "cancelled")]
            assert await services.stores.budgets.open_reservations() == 0
    finally:
        await services.stop()
        stop_process(server.process)


async def test_a_rebuilt_ledger_does_not_count_a_missed_follow_up_twice(tmp_path: Path) -> None:
    """The embedded ledger: a run ends (status and record in one commit) and the process dies
    before settling its budget. At the restart the month's spend is rebuilt from the usage log,
    record included; the sweep that then runs the missed follow-ups must not add it again."""
    base = config_for(tmp_path)
    config = base.model_copy(update={"stores": base.stores.model_copy(update={"jobs": None})})
    first = await GatewayServices.start(config)
    try:
        transport = httpx.ASGITransport(app=create_app(first.config, started=first))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            job_id = await submit(client)
        claimed = await claim_elsewhere(first, job_id)
        now = time.time()
        record = first.meter.record(
            request_id=job_id, customer_id=claimed.customer_id, plan="default", tier="async",
            modality="image", family="sd", model="tiny", created_at=claimed.created_at,
            started_at=now - 2, ended_at=now, outcome="success",
            parameters={"gpu_seconds": 2.0}, job_id=job_id,
        )  # fmt: skip
        ended = await first.stores.jobs.finish(
            job_id, JobStatus.complete, now, expect=RUNNING, usage=record,
            extra={"usage": record.to_dict()},
        )  # fmt: skip
        assert ended is not None and record.billable
    finally:
        await first.stop()  # as good as dead: nothing ran after the commit
    second = await GatewayServices.start(config)
    try:
        month = month_of(now)
        spent = (await second.meter.state(claimed.customer_id, "default", month)).spent
        assert spent.gpu_seconds == pytest.approx(record.gpu_seconds)  # rebuilt from the log
        assert await second.settlement.follow_up_missed(now + FOLLOW_UP_GRACE_S + 1) == 1
        after = (await second.meter.state(claimed.customer_id, "default", month)).spent
        assert after == spent  # not twice
        events = [e async for e in second.stores.events.follow(job_id)]
        assert [e.event for e in events] == ["complete"]
    finally:
        await second.stop()


async def test_recovery_fail_policy_fails_a_lost_run_at_once(tmp_path: Path) -> None:
    services = await GatewayServices.start(config_for(tmp_path, recovery="fail"))
    app = create_app(services.config, started=services)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            job_id = await submit(client)
            lost = await claim_elsewhere(services, job_id)
            assert await services.runner.recover([lost]) == (0, 1)
            assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "error"
    finally:
        await services.stop()


async def test_a_process_without_the_api_role_serves_no_customer_route(tmp_path: Path) -> None:
    services = await GatewayServices.start(config_for(tmp_path, roles=["scheduler"]))
    app = create_app(services.config, started=services)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            assert (await client.get("/health")).status_code == 200
            assert (await client.post("/queue", json=BODY)).status_code == 404
    finally:
        await services.stop()

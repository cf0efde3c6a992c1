"""One contract for the webhook delivery store (``WebhookDeliveries``), run against every
implementation (memory, SQLite, and Redis: a real redis-server, the module's ``redis_server``,
each test under a fresh key namespace). Only the Protocol's operations are used. (Named for the
Protocol: ``tests/application/test_webhooks.py`` holds the sender's tests, and two test modules
may not share a name here.)

Times are the arguments the tests pass (``now``), and the store's own clock (when a finished id
is forgotten) is a FakeClock, so nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from render_gateway.stores.redis_client import key as redis_key
from render_gateway.stores.redis_client import open_redis
from render_gateway.stores.redis_webhooks import RedisWebhookDeliveries
from render_gateway.stores.urls import StoreUrlError
from render_gateway.stores.webhooks import (
    KEEP_FINISHED_SECONDS,
    WebhookDeliveries,
    open_webhook_store,
)

from support.clock import FakeClock
from support.redis_server import RedisServer

NOW = 1_700_000_000.0
LEASE = 30.0
URL = "https://hooks.example.com/render"


@dataclass
class Backend:
    url: str
    clock: FakeClock = field(default_factory=lambda: FakeClock(NOW))
    opened: list[WebhookDeliveries] = field(default_factory=list)
    # Opens the store where the URL alone does not say enough (Redis: this test's namespace).
    make: Callable[[FakeClock], WebhookDeliveries] | None = None

    def open(self) -> WebhookDeliveries:
        if self.make is not None:
            store = self.make(self.clock)
        else:
            store = open_webhook_store(self.url, self.clock)
        self.opened.append(store)
        return store

    def another_claimer(self, store: WebhookDeliveries) -> WebhookDeliveries:
        """A second handle on the same deliveries, as a second replica has: a new connection
        where the store is shared, the same object where it lives in this process only."""
        return store if self.url == "memory://" else self.open()


def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "memory":
        return Backend("memory://")
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        namespace = redis_key("webhooks", uuid.uuid4().hex)  # this test's deliveries only
        return Backend(
            url,
            make=lambda clock: RedisWebhookDeliveries(
                open_redis(url), clock, KEEP_FINISHED_SECONDS, namespace
            ),
        )
    return Backend(f"sqlite://{tmp_path / 'webhooks.db'}")


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    made = _backend(request, tmp_path)
    yield made
    for store in made.opened:
        await store.close()


# The implementations that outlive the process (a restart resumes their deliveries).
@pytest.fixture(params=["sqlite", "redis"])
async def durable_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    made = _backend(request, tmp_path)
    yield made
    for store in made.opened:
        await store.close()


@pytest.fixture
def store(backend: Backend) -> WebhookDeliveries:
    return backend.open()


def body(n: int) -> bytes:
    return b'{"id":"j_%d","status":"complete"}' % n


# --- enqueue -------------------------------------------------------------------------------


async def test_an_enqueued_delivery_is_pending_and_due_at_once(store: WebhookDeliveries) -> None:
    assert await store.pending() == 0
    assert await store.enqueue("j_1.complete", URL, body(1), NOW)
    assert await store.pending() == 1
    [claimed] = await store.claim_due(NOW, 10, LEASE)
    assert (claimed.id, claimed.url, claimed.body) == ("j_1.complete", URL, body(1))
    assert (claimed.attempts, claimed.created_at) == (0, NOW)
    assert claimed.next_attempt_at == NOW + LEASE  # leased until


async def test_bodies_are_kept_byte_for_byte(store: WebhookDeliveries) -> None:
    raw = bytes(range(256)) + b"\x00 not utf-8 \xff"
    assert await store.enqueue("e_1", URL, raw, NOW)
    [claimed] = await store.claim_due(NOW, 1, LEASE)
    assert claimed.body == raw


async def test_the_same_id_is_enqueued_once(store: WebhookDeliveries) -> None:
    assert await store.enqueue("j_1.complete", URL, body(1), NOW)
    # Pending: a second enqueue changes nothing, not even the body or the due time.
    assert not await store.enqueue("j_1.complete", "https://other.example/", body(2), NOW + 5)
    assert await store.pending() == 1
    [claimed] = await store.claim_due(NOW, 10, LEASE)
    assert (claimed.url, claimed.body, claimed.created_at) == (URL, body(1), NOW)


async def test_a_finished_id_is_not_enqueued_again(store: WebhookDeliveries) -> None:
    for delivered, event_id in ((True, "j_1.complete"), (False, "j_2.error")):
        assert await store.enqueue(event_id, URL, body(1), NOW)
        await store.claim_due(NOW, 10, LEASE)
        await store.finish(event_id, delivered, 1, "HTTP 204" if delivered else "HTTP 410")
        assert not await store.enqueue(event_id, URL, body(1), NOW + 1)
    assert await store.pending() == 0
    assert await store.claim_due(NOW + 10 * LEASE, 10, LEASE) == []


async def test_a_finished_id_is_forgotten_after_its_retention(
    store: WebhookDeliveries, backend: Backend
) -> None:
    assert await store.enqueue("j_1.complete", URL, body(1), NOW)
    await store.finish("j_1.complete", True, 1, "HTTP 204")
    backend.clock.advance(KEEP_FINISHED_SECONDS - 1)
    assert not await store.enqueue("j_1.complete", URL, body(1), backend.clock())
    backend.clock.advance(2)  # the record stays small: old finished ids go
    assert await store.enqueue("j_1.complete", URL, body(1), backend.clock())


# --- claim_due -----------------------------------------------------------------------------


async def test_claims_take_due_deliveries_earliest_first_then_oldest(
    store: WebhookDeliveries,
) -> None:
    # Enqueued at different times, then rescheduled so that due order differs from both
    # enqueue order and id order.
    for n, created in enumerate((NOW, NOW + 1, NOW + 2, NOW + 3)):
        assert await store.enqueue(f"e_{n}", URL, body(n), created)
    await store.claim_due(NOW + 3, 10, LEASE)
    await store.reschedule("e_0", 1, NOW + 50, "HTTP 500")
    await store.reschedule("e_1", 1, NOW + 20, "HTTP 500")
    await store.reschedule("e_2", 1, NOW + 20, "HTTP 500")  # same due time: older first
    await store.reschedule("e_3", 1, NOW + 10, "HTTP 500")
    assert await store.claim_due(NOW + 9, 10, LEASE) == []  # none due yet
    first = await store.claim_due(NOW + 60, 3, LEASE)
    assert [d.id for d in first] == ["e_3", "e_1", "e_2"]  # limit respected
    assert [d.id for d in await store.claim_due(NOW + 60, 3, LEASE)] == ["e_0"]


async def test_a_claim_leases_its_deliveries_until_the_lease_ends(
    store: WebhookDeliveries,
) -> None:
    for n in range(3):
        assert await store.enqueue(f"e_{n}", URL, body(n), NOW)
    claimed = await store.claim_due(NOW, 2, LEASE)
    assert len(claimed) == 2
    # In flight: not handed out again, while what was not claimed still is.
    rest = await store.claim_due(NOW + 1, 10, LEASE)
    assert {d.id for d in rest} == {"e_0", "e_1", "e_2"} - {d.id for d in claimed}
    assert await store.claim_due(NOW + LEASE - 1, 10, LEASE) == []
    assert await store.pending() == 3  # leased deliveries are still pending
    # A claimer that died mid-attempt: its deliveries come due again when the lease ends.
    again = await store.claim_due(NOW + LEASE, 10, LEASE)
    assert {d.id for d in again} == {d.id for d in claimed}
    assert all(d.attempts == 0 for d in again)


async def test_a_claim_with_nothing_due_or_no_room_takes_nothing(
    store: WebhookDeliveries,
) -> None:
    assert await store.claim_due(NOW, 10, LEASE) == []
    assert await store.enqueue("e_1", URL, body(1), NOW)
    assert await store.claim_due(NOW - 1, 10, LEASE) == []  # not due before it was enqueued
    assert await store.claim_due(NOW, 0, LEASE) == []
    assert len(await store.claim_due(NOW, 1, LEASE)) == 1


@pytest.mark.parametrize(("limit", "lease"), [(-1, LEASE), (1, 0.0), (1, -5.0), (1, float("nan"))])
async def test_a_claim_needs_a_limit_and_a_positive_lease(
    store: WebhookDeliveries, limit: int, lease: float
) -> None:
    assert await store.enqueue("e_1", URL, body(1), NOW)
    with pytest.raises(ValueError, match="lease_seconds"):
        await store.claim_due(NOW, limit, lease)
    assert len(await store.claim_due(NOW, 1, LEASE)) == 1  # nothing was leased


async def test_concurrent_claimers_never_get_the_same_delivery(
    store: WebhookDeliveries, backend: Backend
) -> None:
    ids = {f"e_{n}" for n in range(60)}
    for n, event_id in enumerate(sorted(ids)):
        assert await store.enqueue(event_id, URL, body(n), NOW)
    other = backend.another_claimer(store)
    claims = await asyncio.gather(
        *(claimer.claim_due(NOW, 7, LEASE) for _ in range(6) for claimer in (store, other))
    )
    taken = [d.id for claim in claims for d in claim]
    assert len(taken) == len(set(taken))  # nobody got a delivery another claim got
    assert len(taken) == min(len(ids), 7 * 12)
    assert set(taken) <= ids


# --- reschedule and finish -----------------------------------------------------------------


async def test_reschedule_records_the_attempts_and_the_next_due_time(
    store: WebhookDeliveries,
) -> None:
    assert await store.enqueue("e_1", URL, body(1), NOW)
    await store.claim_due(NOW, 1, LEASE)
    await store.reschedule("e_1", 1, NOW + 4, "HTTP 503")
    # The new due time replaces the lease: due at NOW + 4, not at the lease's end.
    assert await store.claim_due(NOW + 3.9, 1, LEASE) == []
    [again] = await store.claim_due(NOW + 4, 1, LEASE)
    assert (again.attempts, again.body, again.created_at) == (1, body(1), NOW)
    await store.reschedule("e_1", 2, NOW + 5, "timed out")
    [third] = await store.claim_due(NOW + 5, 1, LEASE)
    assert third.attempts == 2
    assert await store.pending() == 1


async def test_a_delivery_may_be_rescheduled_sooner_than_its_lease(
    store: WebhookDeliveries,
) -> None:
    # A sender that closes mid-attempt hands its delivery back, due at once.
    assert await store.enqueue("e_1", URL, body(1), NOW)
    await store.claim_due(NOW, 1, LEASE)
    await store.reschedule("e_1", 0, NOW + 1, "interrupted")
    assert [d.id for d in await store.claim_due(NOW + 1, 1, LEASE)] == ["e_1"]


async def test_finish_removes_the_delivery(store: WebhookDeliveries) -> None:
    for n in range(3):
        assert await store.enqueue(f"e_{n}", URL, body(n), NOW)
    await store.claim_due(NOW, 10, LEASE)
    await store.finish("e_1", True, 1, "HTTP 204")
    assert await store.pending() == 2
    await store.finish("e_0", False, 6, "HTTP 500")
    assert await store.pending() == 1
    due = await store.claim_due(NOW + LEASE, 10, LEASE)
    assert [d.id for d in due] == ["e_2"]


async def test_unknown_or_finished_ids_are_left_alone(store: WebhookDeliveries) -> None:
    await store.reschedule("nobody", 1, NOW, "HTTP 500")
    await store.finish("nobody", True, 1, "HTTP 204")
    assert await store.pending() == 0
    assert await store.enqueue("e_1", URL, body(1), NOW)
    await store.finish("e_1", True, 1, "HTTP 204")
    await store.reschedule("e_1", 2, NOW, "HTTP 500")  # a late writer does not revive it
    assert await store.pending() == 0
    assert await store.claim_due(NOW + LEASE, 10, LEASE) == []


def test_an_unknown_scheme_is_refused_naming_the_setting() -> None:
    with pytest.raises(StoreUrlError, match=r"gateway\.stores\.webhooks.*redis://, rediss://"):
        open_webhook_store("postgres://localhost/0")
    with pytest.raises(StoreUrlError, match="absolute path"):
        open_webhook_store("sqlite://relative.db")


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
async def test_a_redis_url_opens_the_redis_store(scheme: str) -> None:
    store = open_webhook_store(f"{scheme}://127.0.0.1:1/0")  # opening does no I/O
    assert isinstance(store, RedisWebhookDeliveries)
    await store.close()


async def test_redis_finished_ids_carry_their_retention_as_an_expiry(
    redis_server: RedisServer,
) -> None:
    # Besides the store clock's judgement, Redis drops a finished record when its retention
    # ends, so the record stays small without any sweep (the expiry is checked, not waited for).
    namespace = redis_key("webhooks", uuid.uuid4().hex)
    store = RedisWebhookDeliveries(open_redis(redis_server.url), FakeClock(NOW), 600.0, namespace)
    client = open_redis(redis_server.url)
    try:
        assert await store.enqueue("e_1", URL, body(1), NOW)
        await store.finish("e_1", True, 1, "HTTP 204")
        assert await client.hget(f"{namespace}:f:e_1", "detail") == b"HTTP 204"
        assert 590_000 < await client.pttl(f"{namespace}:f:e_1") <= 600_000
        assert not await store.enqueue("e_1", URL, body(1), NOW)
    finally:
        await client.aclose()
        await store.close()


# --- durable implementations ---------------------------------------------------------------


async def test_deliveries_outlive_the_store_that_enqueued_them(durable_backend: Backend) -> None:
    first = durable_backend.open()
    assert await first.enqueue("e_0", URL, body(0), NOW - 1)
    assert await first.enqueue("e_1", URL, body(1), NOW)
    assert await first.enqueue("e_2", URL, body(2), NOW)
    await first.claim_due(NOW, 2, LEASE)  # e_0 and e_1 in flight when "the process dies"
    await first.finish("e_0", True, 1, "HTTP 204")
    await first.close()
    second = durable_backend.open()
    assert await second.pending() == 2
    assert [d.id for d in await second.claim_due(NOW, 10, LEASE)] == ["e_2"]
    # e_1's lease, taken before "the crash", ends as e_2's (taken just now) does.
    assert {d.id for d in await second.claim_due(NOW + LEASE, 10, LEASE)} == {"e_1", "e_2"}
    assert not await second.enqueue("e_0", URL, body(0), NOW)  # finished ids survive too

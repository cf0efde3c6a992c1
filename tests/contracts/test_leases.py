"""One contract for the lease store, run against every implementation (memory, SQLite and
Redis: a real redis-server, each test in a fresh key prefix). Only the Protocol's operations are
used.

Expiry is judged by the clock the store is opened with: a FakeClock here, so expiry is exact
and no test sleeps.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from render_gateway.stores.leases import LeaseStore, open_lease_store
from render_gateway.stores.urls import StoreUrlError

from support.clock import FakeClock

TTL = 10.0


@dataclass
class Backend:
    url: str
    key_prefix: str = "render"

    def open(self, clock: FakeClock) -> LeaseStore:
        return open_lease_store(self.url, clock, key_prefix=self.key_prefix)


def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    kind = request.param
    if kind == "memory":
        return Backend("memory://")
    if kind == "redis":  # the server only for the redis parameter
        server = request.getfixturevalue("redis_server")
        return Backend(server.url, f"test-{uuid.uuid4().hex}")
    return Backend(f"sqlite://{tmp_path / 'leases.db'}")


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return _backend(request, tmp_path)


# The implementations several processes can share (a lease is only worth having there).
@pytest.fixture(params=["sqlite", "redis"])
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return _backend(request, tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(backend: Backend, clock: FakeClock) -> AsyncIterator[LeaseStore]:
    opened = backend.open(clock)
    yield opened
    await opened.close()


async def test_a_free_lease_is_taken_and_names_its_holder(store: LeaseStore) -> None:
    assert await store.holder("metering") is None
    assert await store.acquire("metering", "a", TTL)
    assert await store.holder("metering") == "a"


async def test_another_holder_is_refused_while_the_lease_lasts(
    store: LeaseStore, clock: FakeClock
) -> None:
    assert await store.acquire("metering", "a", TTL)
    clock.advance(TTL - 0.5)
    assert not await store.acquire("metering", "b", TTL)
    assert await store.holder("metering") == "a"


async def test_renewing_extends_the_lease_from_now(store: LeaseStore, clock: FakeClock) -> None:
    assert await store.acquire("metering", "a", TTL)
    clock.advance(TTL - 1)
    assert await store.acquire("metering", "a", TTL)  # the holder renews
    clock.advance(TTL - 1)  # past the first term, within the renewed one
    assert await store.holder("metering") == "a"
    assert not await store.acquire("metering", "b", TTL)


async def test_an_expired_lease_is_free_for_anyone(store: LeaseStore, clock: FakeClock) -> None:
    assert await store.acquire("metering", "a", TTL)
    clock.advance(TTL + 0.5)
    assert await store.holder("metering") is None
    assert await store.acquire("metering", "b", TTL)
    assert await store.holder("metering") == "b"
    assert not await store.acquire("metering", "a", TTL)  # the old holder has lost it


async def test_a_renewal_may_set_a_shorter_ttl(store: LeaseStore, clock: FakeClock) -> None:
    assert await store.acquire("metering", "a", TTL)
    assert await store.acquire("metering", "a", 1.0)
    clock.advance(1.5)
    assert await store.acquire("metering", "b", TTL)


async def test_only_the_holder_releases_its_lease(store: LeaseStore) -> None:
    assert await store.acquire("metering", "a", TTL)
    await store.release("metering", "b")  # not b's: nothing happens
    assert await store.holder("metering") == "a"
    assert not await store.acquire("metering", "b", TTL)
    await store.release("metering", "a")
    assert await store.holder("metering") is None
    assert await store.acquire("metering", "b", TTL)
    await store.release("metering", "a")  # a no longer holds it: b keeps it
    assert await store.holder("metering") == "b"


async def test_releasing_a_lease_nobody_holds_is_harmless(store: LeaseStore) -> None:
    await store.release("audit", "a")
    assert await store.holder("audit") is None
    assert await store.acquire("audit", "a", TTL)


async def test_leases_of_different_names_are_independent(store: LeaseStore) -> None:
    assert await store.acquire("metering", "a", TTL)
    assert await store.acquire("audit", "b", TTL)
    assert (await store.holder("metering"), await store.holder("audit")) == ("a", "b")
    await store.release("audit", "b")
    assert await store.holder("metering") == "a"


async def test_concurrent_acquires_give_the_lease_to_exactly_one(store: LeaseStore) -> None:
    holders = [f"h{n}" for n in range(8)]
    results = await asyncio.gather(*(store.acquire("metering", h, TTL) for h in holders))
    assert results.count(True) == 1
    assert await store.holder("metering") == holders[results.index(True)]


async def test_a_ttl_must_be_positive(store: LeaseStore) -> None:
    for ttl in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="ttl_seconds"):
            await store.acquire("metering", "a", ttl)
    assert await store.holder("metering") is None


# Fencing tokens: a stale holder's writes can be refused by their lower token.


async def test_the_token_grows_each_time_the_lease_changes_hands(
    store: LeaseStore, clock: FakeClock
) -> None:
    assert await store.acquire("metering", "a", TTL)
    first = await store.token("metering", "a")
    assert isinstance(first, int)
    await store.release("metering", "a")
    assert await store.acquire("metering", "b", TTL)  # released: b takes it
    second = await store.token("metering", "b")
    assert second is not None and second > first
    clock.advance(TTL + 0.5)
    assert await store.acquire("metering", "a", TTL)  # expired: a takes it back
    third = await store.token("metering", "a")
    assert third is not None and third > second


async def test_the_token_is_stable_across_renewals(store: LeaseStore, clock: FakeClock) -> None:
    assert await store.acquire("metering", "a", TTL)
    token = await store.token("metering", "a")
    for ttl in (TTL, 1.0, TTL):
        clock.advance(0.5)
        assert await store.acquire("metering", "a", ttl)
        assert await store.token("metering", "a") == token
    assert not await store.acquire("metering", "b", TTL)  # a refused taker changes nothing
    assert await store.token("metering", "a") == token


async def test_only_the_holder_has_a_token(store: LeaseStore) -> None:
    assert await store.token("metering", "a") is None  # never taken
    assert await store.acquire("metering", "a", TTL)
    assert await store.token("metering", "b") is None
    assert await store.token("audit", "a") is None  # another lease's
    await store.release("metering", "a")
    assert await store.token("metering", "a") is None  # released


async def test_a_stale_holder_has_no_token(store: LeaseStore, clock: FakeClock) -> None:
    assert await store.acquire("metering", "a", TTL)
    stale = await store.token("metering", "a")
    assert stale is not None
    clock.advance(TTL + 0.5)
    assert await store.token("metering", "a") is None  # expired
    assert await store.acquire("metering", "b", TTL)
    assert await store.token("metering", "a") is None  # and replaced
    current = await store.token("metering", "b")
    assert current is not None and current > stale
    assert not await store.acquire("metering", "a", TTL)  # the stale holder cannot renew


async def test_tokens_of_different_names_are_independent(store: LeaseStore) -> None:
    assert await store.acquire("metering", "a", TTL)
    assert await store.acquire("audit", "a", TTL)
    metering = await store.token("metering", "a")
    await store.release("audit", "a")
    assert await store.acquire("audit", "b", TTL)
    assert await store.token("metering", "a") == metering


async def test_the_winner_of_concurrent_acquires_alone_has_a_token(store: LeaseStore) -> None:
    holders = [f"h{n}" for n in range(8)]
    results = await asyncio.gather(*(store.acquire("metering", h, TTL) for h in holders))
    tokens = [await store.token("metering", h) for h in holders]
    assert [t is not None for t in tokens] == results


def test_an_unknown_scheme_is_refused_naming_the_setting() -> None:
    with pytest.raises(StoreUrlError, match=r"gateway\.stores\.leases"):
        open_lease_store("postgres://db/leases")
    with pytest.raises(StoreUrlError, match="absolute path"):
        open_lease_store("sqlite://relative.db")


# Shared implementations: the lease holds across connections and processes.


async def test_a_lease_outlives_the_store_that_took_it(
    shared_backend: Backend, clock: FakeClock
) -> None:
    first = shared_backend.open(clock)
    assert await first.acquire("metering", "a", TTL)
    await first.close()
    second = shared_backend.open(clock)
    try:
        assert await second.holder("metering") == "a"
        assert not await second.acquire("metering", "b", TTL)
        assert await second.token("metering", "a") is not None
    finally:
        await second.close()


# Another process opens the same URL with a clock fixed at ``now`` and tries for the lease.
OTHER_PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    from render_gateway.stores.leases import open_lease_store

    async def main(url: str, prefix: str, holder: str, now: float) -> None:
        store = open_lease_store(url, lambda: now, key_prefix=prefix)
        try:
            print(await store.acquire("metering", holder, 10.0))
        finally:
            await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
    """
)


async def _acquire_in_another_process(backend: Backend, holder: str, now: float) -> bool:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OTHER_PROCESS, backend.url, backend.key_prefix, holder, repr(now),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    return {"True": True, "False": False}[out.decode().strip()]


async def test_another_process_is_refused_until_the_lease_expires_or_is_released(
    shared_backend: Backend, clock: FakeClock
) -> None:
    store = shared_backend.open(clock)
    try:
        assert await store.acquire("metering", "here", TTL)
        here = await store.token("metering", "here")
        assert here is not None
        assert not await _acquire_in_another_process(shared_backend, "there", clock.now + 5)
        assert await store.holder("metering") == "here"
        # Past the lease's end (by the other process's clock) it is free to take.
        assert await _acquire_in_another_process(shared_backend, "there", clock.now + 11)
        assert not await store.acquire("metering", "here", TTL)  # clock.now: "there" holds it
        assert await store.token("metering", "here") is None  # a stale holder
        there = await store.token("metering", "there")
        assert there is not None and there > here
        await store.release("metering", "here")  # not ours any more: a no-op
        assert await store.holder("metering") == "there"

        # Released by its holder, a lease is free at once.
        other = shared_backend.open(clock)
        await other.release("metering", "there")
        await other.close()
        assert await store.acquire("metering", "here", TTL)
        await store.release("metering", "here")
        assert await _acquire_in_another_process(shared_backend, "there", clock.now)
    finally:
        await store.close()


# SQLite only: a file made before fencing tokens gains its token column.


async def test_a_lease_file_from_before_fencing_tokens_still_opens(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
        "expires_at REAL NOT NULL);"
    )
    old.execute("INSERT INTO leases VALUES ('metering', 'a', ?)", (clock.now + TTL,))
    old.commit()
    old.close()
    store = open_lease_store(f"sqlite://{path}", clock)
    try:
        assert await store.holder("metering") == "a"
        before = await store.token("metering", "a")
        assert before is not None
        assert await store.acquire("metering", "a", TTL)  # a renewal: the same token
        assert await store.token("metering", "a") == before
        clock.advance(TTL + 0.5)
        assert await store.acquire("metering", "b", TTL)
        after = await store.token("metering", "b")
        assert after is not None and after > before
    finally:
        await store.close()

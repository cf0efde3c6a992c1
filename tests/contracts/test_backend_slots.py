"""One contract for the backend slot store, run against every implementation (memory, and Redis:
a real redis-server, each test in a fresh key prefix). Only the Protocol's operations are used,
and ``SlotKeeper`` on top of them.

Expiry is judged by the clock the store is opened with: a FakeClock here, so expiry is exact
and no test sleeps (but the keeper's renewal loop, which runs on real time).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from render_gateway.stores.backend_slots import BackendSlots, SlotKeeper, open_backend_slots
from render_gateway.stores.urls import StoreUrlError

from support.clock import FakeClock

LEASE = 30.0


@dataclass
class Backend:
    url: str
    key_prefix: str = "render"

    def open(self, clock: Callable[[], float], lease_seconds: float = LEASE) -> BackendSlots:
        return open_backend_slots(
            self.url, clock, lease_seconds=lease_seconds, key_prefix=self.key_prefix
        )


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "redis":  # the server only for the redis parameter
        server = request.getfixturevalue("redis_server")
        return Backend(server.url, f"test-{uuid.uuid4().hex}")
    return Backend("memory://")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def slots(backend: Backend, clock: FakeClock) -> AsyncIterator[BackendSlots]:
    opened = backend.open(clock)
    yield opened
    await opened.close()


async def test_of_20_concurrent_takes_at_capacity_3_exactly_3_succeed(
    slots: BackendSlots,
) -> None:
    tokens = await asyncio.gather(*(slots.take("gpu-1", 3) for _ in range(20)))
    taken = [token for token in tokens if token is not None]
    assert len(taken) == 3
    assert len(set(taken)) == 3
    # Another backend's slots are its own.
    assert await slots.take("gpu-2", 3) is not None


async def test_a_slot_given_back_frees_one(slots: BackendSlots) -> None:
    first = await slots.take("gpu-1", 2)
    second = await slots.take("gpu-1", 2)
    assert first is not None and second is not None
    assert await slots.take("gpu-1", 2) is None
    await slots.give_back("gpu-1", first)
    third = await slots.take("gpu-1", 2)
    assert third is not None
    assert await slots.take("gpu-1", 2) is None


async def test_a_token_given_back_twice_is_harmless(slots: BackendSlots) -> None:
    first = await slots.take("gpu-1", 2)
    assert first is not None
    await slots.give_back("gpu-1", first)
    second = await slots.take("gpu-1", 2)
    assert second is not None
    await slots.give_back("gpu-1", first)  # again: must not free the slot ``second`` holds
    assert await slots.take("gpu-1", 2) is not None
    assert await slots.take("gpu-1", 2) is None
    await slots.give_back("gpu-1", "never-taken")  # a token never handed out: ignored too
    assert await slots.take("gpu-1", 2) is None


async def test_a_lapsed_lease_frees_its_slot(slots: BackendSlots, clock: FakeClock) -> None:
    held = await slots.take("gpu-1", 1)
    assert held is not None
    clock.advance(LEASE - 0.5)
    assert await slots.take("gpu-1", 1) is None  # still held
    clock.advance(1.0)
    assert await slots.take("gpu-1", 1) is not None  # the holder died: its slot is free


async def test_renew_keeps_a_slot_and_does_not_revive_a_lapsed_one(
    slots: BackendSlots, clock: FakeClock
) -> None:
    kept = await slots.take("gpu-1", 2)
    lapsing = await slots.take("gpu-1", 2)
    assert kept is not None and lapsing is not None
    clock.advance(LEASE / 2)
    assert await slots.renew("gpu-1", [kept]) == {kept}
    clock.advance(LEASE / 2 + 1)  # ``lapsing`` expired; ``kept`` was renewed halfway
    assert await slots.renew("gpu-1", [kept, lapsing]) == {kept}
    other = await slots.take("gpu-1", 2)  # the lapsed slot is free for someone else
    assert other is not None
    assert await slots.take("gpu-1", 2) is None
    clock.advance(LEASE - 1)  # ``kept`` was renewed 1 s after ``other`` was taken
    assert await slots.renew("gpu-1", [kept]) == {kept}
    assert await slots.renew("gpu-1", []) == frozenset()


async def test_a_given_back_token_is_not_renewed(slots: BackendSlots) -> None:
    token = await slots.take("gpu-1", 1)
    assert token is not None
    await slots.give_back("gpu-1", token)
    assert await slots.renew("gpu-1", [token]) == frozenset()
    assert await slots.take("gpu-1", 1) is not None


async def test_the_keeper_renews_what_it_holds_until_it_is_given_back(backend: Backend) -> None:
    # Real time here: a lease of 0.6 s, renewed every 0.2 s by the keeper's loop.
    lease = 0.6
    mine = backend.open(time.time, lease)
    # Another replica's store (memory://: the same process's, there is no other).
    theirs = mine if backend.url == "memory://" else backend.open(time.time, lease)
    keeper = SlotKeeper(mine, lease)
    try:
        token = await keeper.take("gpu-1", 1)
        assert token
        assert keeper.held("gpu-1") == {token}
        await asyncio.sleep(lease * 2.5)  # several leases: renewed all along
        assert await theirs.take("gpu-1", 1) is None
        await keeper.give_back("gpu-1", token)
        assert keeper.held("gpu-1") == frozenset()
        again = await theirs.take("gpu-1", 1)
        assert again is not None
        await keeper.give_back("gpu-1", token)  # twice through the keeper: harmless
        assert await theirs.take("gpu-1", 1) is None
    finally:
        await keeper.close()  # closes ``mine``
        if theirs is not mine:
            await theirs.close()


def test_an_unknown_scheme_is_refused_naming_the_setting() -> None:
    with pytest.raises(StoreUrlError, match=r"gateway\.stores\.slots"):
        open_backend_slots("sqlite:///tmp/slots.db")


def test_a_lease_must_be_positive() -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        open_backend_slots("memory://", lease_seconds=0)

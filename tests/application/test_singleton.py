"""Singleton roles on real lease stores: exactly one of several processes' roles runs, and
another takes over when the holder closes, crashes or loses its lease.

The roles' loops run in real time (a short ttl); expiry is judged by the store's FakeClock, so a
lease expires exactly when a test moves the clock and never by accident on a slow machine.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from render_gateway.application.singleton import SingletonRole, process_holder_id
from render_gateway.stores.leases import LeaseStore, open_lease_store

from support.clock import FakeClock

TTL = 0.6  # the roles try (and renew) every 0.2 s
WAIT = 10.0  # how long a test waits for something before failing instead of hanging


class Role:
    """What a role does when started and stopped, recorded."""

    def __init__(self, name: str, fail_starts: int = 0) -> None:
        self.name, self.fail_starts = name, fail_starts
        self.events: list[str] = []

    async def start(self) -> None:
        if self.fail_starts:
            self.fail_starts -= 1
            self.events.append("start failed")
            raise RuntimeError("the role could not start")
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")


async def wait_until(condition: Callable[[], bool]) -> float:
    """Seconds until ``condition`` held; fails the test after ``WAIT``."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > WAIT:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - began


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def leases(clock: FakeClock) -> AsyncIterator[LeaseStore]:
    store = open_lease_store("memory://", clock)
    yield store
    await store.close()


class Running:
    """Roles started as their process would start them, closed at the end of the test."""

    def __init__(self) -> None:
        self.roles: list[SingletonRole] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, leases: LeaseStore, holder: str, role: Role) -> SingletonRole:
        singleton = SingletonRole(leases, "metering", holder, TTL, role.start, role.stop)
        self.roles.append(singleton)
        self.tasks.append(asyncio.create_task(singleton.run()))
        return singleton

    async def close(self) -> None:
        for singleton in self.roles:
            await singleton.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    started = Running()
    yield started
    await started.close()


async def test_of_two_roles_on_one_lease_exactly_one_runs(
    leases: LeaseStore, running: Running
) -> None:
    first, second = Role("first"), Role("second")
    a = running.start(leases, "a", first)
    b = running.start(leases, "b", second)
    await wait_until(lambda: a.active or b.active)
    await asyncio.sleep(TTL * 2)  # several renewals later it is still exactly one
    assert [a.active, b.active].count(True) == 1
    assert sorted([first.events, second.events]) == [[], ["start"]]
    assert await leases.holder("metering") == ("a" if a.active else "b")


async def test_when_the_active_role_closes_the_other_takes_over_within_the_ttl(
    leases: LeaseStore, running: Running
) -> None:
    first, second = Role("first"), Role("second")
    a = running.start(leases, "a", first)
    await wait_until(lambda: a.active)
    b = running.start(leases, "b", second)
    await asyncio.sleep(TTL / 2)
    assert not b.active

    await a.close()
    assert not a.active and first.events == ["start", "stop"]
    assert await wait_until(lambda: b.active) < TTL  # released: taken at b's next try
    assert second.events == ["start"]
    assert await leases.holder("metering") == "b"


async def test_when_the_active_role_stops_renewing_the_other_takes_over_once_it_expires(
    leases: LeaseStore, clock: FakeClock, running: Running
) -> None:
    second = Role("second")
    a = SingletonRole(leases, "metering", "a", TTL, Role("first").start, Role("first").stop)
    crashed = asyncio.create_task(a.run())
    await wait_until(lambda: a.active)
    crashed.cancel()  # as a crash would: no more renewals, the lease is not handed back
    await asyncio.gather(crashed, return_exceptions=True)

    b = running.start(leases, "b", second)
    await asyncio.sleep(TTL)  # b tries a few times; by the store's clock a's lease still holds
    assert not b.active and await leases.holder("metering") == "a"
    clock.advance(TTL + 0.01)
    assert await wait_until(lambda: b.active) < TTL
    assert await leases.holder("metering") == "b"


async def test_a_lost_lease_stops_the_role_at_once_and_it_tries_again(
    leases: LeaseStore, clock: FakeClock, running: Running
) -> None:
    role = Role("only")
    a = running.start(leases, "a", role)
    await wait_until(lambda: a.active)
    clock.advance(TTL + 0.01)  # a's lease expires before its next renewal...
    assert await leases.acquire("metering", "intruder", 60.0)  # ...and someone else takes it
    assert await wait_until(lambda: not a.active) < TTL
    assert role.events == ["start", "stop"]

    await leases.release("metering", "intruder")
    await wait_until(lambda: a.active)  # back to trying: it runs again once the lease is free
    assert role.events == ["start", "stop", "start"]


async def test_a_renewal_that_errors_stops_the_role(tmp_path: Path, running: Running) -> None:
    store = open_lease_store(f"sqlite://{tmp_path / 'leases.db'}")
    role = Role("only")
    a = running.start(store, "a", role)
    await wait_until(lambda: a.active)
    await store.close()  # every acquire now raises: the lease cannot be vouched for
    assert await wait_until(lambda: not a.active) < TTL
    assert role.events == ["start", "stop"]
    await asyncio.sleep(TTL / 2)
    assert role.events == ["start", "stop"]  # still trying, but never running without a lease


async def test_a_start_that_fails_hands_the_lease_back_and_is_tried_again(
    leases: LeaseStore, running: Running
) -> None:
    role = Role("only", fail_starts=1)
    a = running.start(leases, "a", role)
    await wait_until(lambda: role.events.count("start") == 1)
    assert role.events == ["start failed", "stop", "start"]
    assert a.active and await leases.holder("metering") == "a"


async def test_close_stops_the_role_and_releases_the_lease(
    leases: LeaseStore, running: Running
) -> None:
    role = Role("only")
    a = running.start(leases, "a", role)
    await wait_until(lambda: a.active)
    await a.close()
    assert role.events == ["start", "stop"]
    assert await leases.holder("metering") is None
    await asyncio.sleep(TTL / 2)  # the loop has ended: it takes the lease no more
    assert await leases.holder("metering") is None
    assert running.tasks[0].done()


async def test_closing_a_role_that_never_ran_touches_nothing_it_does_not_hold(
    leases: LeaseStore,
) -> None:
    role = Role("only")
    assert await leases.acquire("metering", "other", 60.0)
    idle = SingletonRole(leases, "metering", "a", TTL, role.start, role.stop)
    await idle.close()
    await idle.run()  # closed: returns at once
    assert role.events == [] and not idle.active
    assert await leases.holder("metering") == "other"


def test_a_ttl_must_be_positive(leases: LeaseStore) -> None:
    role = Role("only")
    with pytest.raises(ValueError, match="ttl_seconds"):
        SingletonRole(leases, "metering", "a", 0.0, role.start, role.stop)


def test_holder_ids_name_the_process_and_differ_per_call() -> None:
    first, second = process_holder_id(), process_holder_id()
    host, pid, random_part = first.rsplit(":", 2)
    assert (host, pid) == (socket.gethostname(), str(os.getpid()))
    assert len(random_part) >= 8
    assert first != second


async def test_a_role_that_wins_the_lease_notes_its_fencing_token(
    leases: LeaseStore, running: Running
) -> None:
    first, second = Role("first"), Role("second")
    a = running.start(leases, "a", first)
    await wait_until(lambda: a.active)
    token = a.token
    assert token is not None and token == await leases.token("metering", "a")
    await asyncio.sleep(TTL)  # renewals keep the token
    assert a.token == token

    b = running.start(leases, "b", second)
    await a.close()
    assert a.token is None  # no longer running: no token to write with
    await wait_until(lambda: b.active)
    assert b.token is not None and b.token > token  # a's writes are now refusable


async def test_a_lost_lease_forgets_its_token(
    leases: LeaseStore, clock: FakeClock, running: Running
) -> None:
    a = running.start(leases, "a", Role("only"))
    await wait_until(lambda: a.active)
    first = a.token
    clock.advance(TTL + 0.01)
    assert await leases.acquire("metering", "intruder", 60.0)
    await wait_until(lambda: not a.active)
    assert a.token is None
    await leases.release("metering", "intruder")
    await wait_until(lambda: a.active)
    assert first is not None and a.token is not None and a.token > first

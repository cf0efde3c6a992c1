"""One contract for the job event bus (stores/events.py), run against every implementation.

``memory://`` and ``redis://`` (a real redis-server, the ``redis_server`` fixture). The tests use
the Protocol's operations only. ``replica`` is a second handle on the same bus, as another gateway
process would open it: for memory (one process is the whole deployment) it is the same object,
for Redis a second connection, so the cross-replica tests below mean something there.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from render_gateway.stores.events import EventBus, JobEvent, LogEnded, open_event_bus
from render_gateway.stores.urls import StoreUrlError

WAIT = 5.0  # seconds any one await may take before the test fails instead of hanging
QUIET = 0.05  # seconds a stream is given to (wrongly) produce something


@dataclass
class Backend:
    # Opens a bus that keeps at most ``keep_finished`` finished logs.
    open: Callable[[int], EventBus]
    # A second handle on the bus, as another replica has it.
    replica: Callable[[EventBus], Awaitable[EventBus]]
    name: str


def _memory_backend(request: pytest.FixtureRequest) -> Backend:
    async def same_bus(bus: EventBus) -> EventBus:
        return bus

    return Backend(
        open=lambda keep: open_event_bus("memory://", keep_finished=keep),
        replica=same_bus,
        name="memory",
    )


def _redis_backend(request: pytest.FixtureRequest) -> Backend:
    url = request.getfixturevalue("redis_server").url

    async def second_bus(bus: EventBus) -> EventBus:
        return open_event_bus(url)  # another process's bus: its own connections and instance id

    # Redis bounds finished logs by time (retention_s), not by count: ``keep`` is memory's.
    return Backend(open=lambda keep: open_event_bus(url), replica=second_bus, name="redis")


BACKENDS = {"memory": _memory_backend, "redis": _redis_backend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param](request)


def memory_only(backend: Backend, why: str) -> None:
    if backend.name != "memory":
        pytest.skip(why)


@pytest.fixture
async def bus(backend: Backend) -> AsyncIterator[EventBus]:
    opened = backend.open(10_000)
    yield opened
    await opened.close()


@pytest.fixture
async def replica(backend: Backend, bus: EventBus) -> AsyncIterator[EventBus]:
    other = await backend.replica(bus)
    yield other
    if other is not bus:
        await other.close()


def new_job() -> str:
    # Fresh per test: a shared server (Redis) keeps other tests' logs.
    return f"job-{uuid.uuid4().hex}"


async def events_of(bus: EventBus, job_id: str, after: int = 0) -> list[JobEvent]:
    """Everything ``follow`` yields until it ends (it must end: the log is finished)."""
    async with asyncio.timeout(WAIT):
        return [item async for item in bus.follow(job_id, after)]


class Follower:
    """A client following a job in the background, one event at a time."""

    def __init__(self, bus: EventBus, job_id: str, after: int = 0) -> None:
        self.received: asyncio.Queue[JobEvent] = asyncio.Queue()
        self.task = asyncio.create_task(self._follow(bus, job_id, after))

    async def _follow(self, bus: EventBus, job_id: str, after: int) -> None:
        async for item in bus.follow(job_id, after):
            await self.received.put(item)

    async def next(self) -> JobEvent:
        async with asyncio.timeout(WAIT):
            return await self.received.get()

    async def ended(self) -> bool:
        async with asyncio.timeout(WAIT):
            await self.task
        return self.task.done()

    async def quiet(self) -> bool:
        """True when nothing arrived and the stream is still open after a moment."""
        await asyncio.sleep(QUIET)
        return self.received.empty() and not self.task.done()


# Numbering and replay.


async def test_events_are_numbered_per_job_from_one(bus: EventBus) -> None:
    first, second = new_job(), new_job()
    published = [
        await bus.publish(first, "started", {}),
        await bus.publish(first, "progress", {"progress": 0.5, "step": 1}),
        await bus.publish(second, "started", {}),
        await bus.publish(first, "complete", {"outputs": ["a"]}),
    ]
    assert [(e.id, e.event) for e in published] == [
        (1, "started"),
        (2, "progress"),
        (1, "started"),
        (3, "complete"),
    ]
    assert published[1].data == {"progress": 0.5, "step": 1}
    assert [e.terminal for e in published] == [False, False, False, True]


async def test_follow_replays_the_events_after_any_id(bus: EventBus) -> None:
    job = new_job()
    for n in range(3):
        await bus.publish(job, "progress", {"progress": n / 3, "step": n})
    await bus.publish(job, "error", {"code": "oom", "message": "out of memory"})
    everything = await events_of(bus, job)
    assert [e.id for e in everything] == [1, 2, 3, 4]
    for after in range(5):
        assert await events_of(bus, job, after) == everything[after:]
    # An id past the terminal one (a Last-Event-ID of a rebuilt event) ends the stream at once.
    assert await events_of(bus, job, 10**17) == []


async def test_follow_of_a_job_without_a_log_ends_at_once(bus: EventBus) -> None:
    assert await events_of(bus, new_job()) == []


async def test_each_event_carries_when_it_was_published_and_log_reads_them(
    bus: EventBus, replica: EventBus
) -> None:
    job_id = new_job()
    assert await replica.log(job_id) == []  # no log yet
    before = time.time()
    published = [
        await bus.publish(job_id, "started", {}),
        await bus.publish(job_id, "progress", {"progress": 0.5, "step": 1}),
    ]
    log = await replica.log(job_id)  # as it stands: a running job's log, without waiting
    assert log == published
    published.append(await bus.publish(job_id, "complete", {"outputs": ["a"]}))
    after = time.time()
    log = await replica.log(job_id)
    assert [(e.id, e.event, e.data) for e in log] == [
        (1, "started", {}), (2, "progress", {"progress": 0.5, "step": 1}),
        (3, "complete", {"outputs": ["a"]}),
    ]  # fmt: skip
    stamps = [e.at for e in log]
    assert all(at is not None and before <= at <= after for at in stamps), stamps
    assert stamps == sorted(stamps)  # type: ignore[type-var]
    assert stamps == [e.at for e in published]
    assert [e.at for e in await events_of(replica, job_id)] == stamps  # follow carries them too


# Live following.


async def test_follow_sees_live_events_and_ends_after_the_terminal_one(bus: EventBus) -> None:
    job = new_job()
    await bus.publish(job, "started", {})
    follower = Follower(bus, job)
    assert (await follower.next()).event == "started"
    assert await follower.quiet()  # an active log keeps the stream open
    await bus.publish(job, "progress", {"progress": 0.25, "step": 1})
    assert (await follower.next()).id == 2
    assert await follower.quiet()
    await bus.publish(job, "complete", {"outputs": ["x"]})
    terminal = await follower.next()
    assert (terminal.id, terminal.event, terminal.data) == (3, "complete", {"outputs": ["x"]})
    assert await follower.ended()
    assert follower.received.empty()


async def test_a_follower_resuming_mid_log_gets_only_what_it_missed(bus: EventBus) -> None:
    job = new_job()
    await bus.publish(job, "started", {})
    await bus.publish(job, "progress", {"progress": 0.5, "step": 1})
    follower = Follower(bus, job, after=2)
    assert await follower.quiet()
    await bus.publish(job, "error", {"code": "cancelled", "message": "the job was cancelled"})
    assert (await follower.next()).id == 3
    assert await follower.ended()


async def test_two_followers_each_get_every_event(bus: EventBus, replica: EventBus) -> None:
    job = new_job()
    await bus.publish(job, "started", {})
    here, there = Follower(bus, job), Follower(replica, job, after=1)
    assert (await here.next()).id == 1
    for step in (1, 2):
        published = await bus.publish(job, "progress", {"progress": step / 2, "step": step})
        assert await here.next() == published
        assert await there.next() == published
    done = await bus.publish(job, "complete", {"outputs": []})
    assert await here.next() == done
    assert await there.next() == done
    assert await here.ended()
    assert await there.ended()


async def test_a_replica_follows_what_another_published(bus: EventBus, replica: EventBus) -> None:
    job = new_job()
    await bus.publish(job, "started", {})
    assert await replica.has_log(job)
    follower = Follower(replica, job)
    assert (await follower.next()).event == "started"
    await bus.publish(job, "complete", {"outputs": []})
    assert (await follower.next()).event == "complete"
    assert await follower.ended()


# The terminal event.


@pytest.mark.parametrize("terminal", ["complete", "error"])
async def test_nothing_may_follow_a_terminal_event(bus: EventBus, terminal: str) -> None:
    job = new_job()
    await bus.publish(job, "started", {})
    await bus.publish(job, terminal, {})
    for event in ("progress", "complete", "error"):
        with pytest.raises(LogEnded, match="already ended"):
            await bus.publish(job, event, {})
    assert [e.event for e in await events_of(bus, job)] == ["started", terminal]


# Log state.


async def test_has_log_from_the_first_event_on(bus: EventBus) -> None:
    job = new_job()
    assert not await bus.has_log(job)
    await bus.publish(job, "started", {})
    assert await bus.has_log(job)
    await bus.publish(job, "complete", {"outputs": []})
    assert await bus.has_log(job)  # finished logs stay for replay (within the bound)


async def test_progress_is_the_latest_progress_event(bus: EventBus) -> None:
    job = new_job()
    assert await bus.progress(job) == (0.0, None)
    await bus.publish(job, "started", {})
    assert await bus.progress(job) == (0.0, None)
    await bus.publish(job, "progress", {"progress": 0.25, "step": 1})
    await bus.publish(job, "progress", {"progress": 0.5, "step": 2})
    assert await bus.progress(job) == (0.5, 2)
    # A field a progress event leaves out keeps its last value.
    await bus.publish(job, "progress", {"progress": 0.75})
    assert await bus.progress(job) == (0.75, 2)
    await bus.publish(job, "progress", {"step": 4})
    assert await bus.progress(job) == (0.75, 4)
    await bus.publish(job, "complete", {"outputs": []})
    assert await bus.progress(job) == (0.75, 4)


async def test_only_the_most_recently_finished_logs_are_kept(backend: Backend) -> None:
    memory_only(
        backend,
        "keep_finished is memory's per-process count; Redis expires each finished log "
        "retention_s after its terminal event (one bound for all replicas), so which logs "
        "remain depends on time, not on how many finished since",
    )
    bus = backend.open(2)
    try:
        active, first, second, third, fourth = (new_job() for _ in range(5))
        await bus.publish(active, "started", {})  # the oldest log, but never finished
        for job in (first, second, third, fourth):
            await bus.publish(job, "started", {})
        # The order they finish in decides, not the order they started in.
        await bus.publish(second, "complete", {"outputs": []})
        await bus.publish(first, "complete", {"outputs": []})
        assert await bus.has_log(second) and await bus.has_log(first)
        await bus.publish(third, "complete", {"outputs": []})
        assert not await bus.has_log(second)
        assert await bus.has_log(first) and await bus.has_log(third)
        await bus.publish(fourth, "error", {"code": "x", "message": "y"})
        assert not await bus.has_log(first)
        assert await bus.has_log(third) and await bus.has_log(fourth)
        assert await bus.has_log(active)  # active logs are never dropped
        assert [e.id for e in await events_of(bus, fourth)] == [1, 2]
        assert await events_of(bus, second) == []  # a dropped log is as if there were none
    finally:
        await bus.close()


async def test_a_follower_gets_the_terminal_event_of_a_log_dropped_meanwhile(
    backend: Backend,
) -> None:
    memory_only(
        backend,
        "Redis does not drop a finished log by count: it expires retention_s after the "
        "terminal event, which a follower reading the stream has long been handed",
    )
    bus = backend.open(1)
    try:
        job, later = new_job(), new_job()
        await bus.publish(job, "started", {})
        follower = Follower(bus, job)
        assert (await follower.next()).id == 1
        # Both finish before the follower runs again: the bound of one drops ``job``'s log.
        await bus.publish(job, "complete", {"outputs": []})
        await bus.publish(later, "complete", {"outputs": []})
        assert not await bus.has_log(job)
        assert (await follower.next()).event == "complete"
        assert await follower.ended()
    finally:
        await bus.close()


# Cancellation.


async def test_request_cancel_without_a_listener_reaches_nobody(bus: EventBus) -> None:
    job = new_job()
    assert await bus.request_cancel(job) is False
    # A cancel is not kept for a run that registers later.
    assert not bus.listen_cancel(job).is_set()
    bus.stop_listening(job)


async def test_request_cancel_sets_the_listener_of_that_job_only(bus: EventBus) -> None:
    job, other = new_job(), new_job()
    listener, bystander = bus.listen_cancel(job), bus.listen_cancel(other)
    assert not listener.is_set()
    assert await bus.request_cancel(job) is True
    async with asyncio.timeout(WAIT):
        await listener.wait()
    assert not bystander.is_set()
    bus.stop_listening(job)
    bus.stop_listening(other)


async def test_a_cancel_from_another_replica_reaches_the_run(
    bus: EventBus, replica: EventBus
) -> None:
    job = new_job()
    listener = bus.listen_cancel(job)
    assert await replica.request_cancel(job) is True
    async with asyncio.timeout(WAIT):
        await listener.wait()
    bus.stop_listening(job)
    assert await replica.request_cancel(job) is False


async def test_a_listener_is_one_event_set_once(bus: EventBus) -> None:
    job = new_job()
    listener = bus.listen_cancel(job)
    assert bus.listen_cancel(job) is listener  # registering again is the same registration
    assert await bus.request_cancel(job) is True
    async with asyncio.timeout(WAIT):
        await listener.wait()
    # A second cancel (a client retrying its DELETE) still lands and changes nothing.
    assert await bus.request_cancel(job) is True
    assert listener.is_set()
    assert bus.listen_cancel(job) is listener  # still set: it is never cleared behind the run
    assert listener.is_set()
    bus.stop_listening(job)


async def test_after_stop_listening_a_cancel_reaches_nobody(bus: EventBus) -> None:
    job = new_job()
    cancelled = bus.listen_cancel(job)
    assert await bus.request_cancel(job) is True
    bus.stop_listening(job)
    assert await bus.request_cancel(job) is False
    bus.stop_listening(job)  # stopping twice is harmless
    # The job runs again here (requeued): its new run starts uncancelled.
    again = bus.listen_cancel(job)
    assert again is not cancelled
    assert cancelled.is_set() and not again.is_set()
    bus.stop_listening(job)


# URL handling.


def test_an_unknown_scheme_names_the_setting() -> None:
    with pytest.raises(StoreUrlError, match=r"gateway\.stores\.events: 'memroy://'"):
        open_event_bus("memroy://")

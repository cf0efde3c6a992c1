"""The bracket's wait for the statistics to count its own run (inference/attribution.py).

A real Triton shows a run in its statistics within a read or two of answering, and how late
cannot be chosen from outside: here a scripted statistics source (in memory) releases each run's
figures a chosen number of reads after the gateway saw it end, so every order can be forced.
``test_triton_clients_e2e`` runs the same promise against a real Triton.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from render_gateway.inference import attribution
from render_gateway.inference.attribution import Attribution, QueueReading


@dataclass
class Statistics:
    """A model's cumulative figures; ``finish`` adds a run that shows after ``late`` reads."""

    queue_ns: int = 0
    succeeded: int = 0
    counts: bool = True  # False: a server that reports no success count
    pending: list[tuple[int, int]] = field(default_factory=list)  # (reads left, queue ns)
    reads: int = 0

    def finish(self, queued_s: float, late: int = 0) -> None:
        self.pending.append((late, int(queued_s * 1e9)))

    async def read(self, model: str) -> QueueReading:
        self.reads += 1
        still: list[tuple[int, int]] = []
        for left, queued in self.pending:
            if left <= 0:
                self.queue_ns += queued
                self.succeeded += 1
            else:
                still.append((left - 1, queued))
        self.pending = still
        return QueueReading(self.queue_ns, self.succeeded if self.counts else None)


async def run(
    attributed: Attribution, stats: Statistics, queued_s: float, late: int, wall_s: float = 0.05
) -> float | None:
    """One call: it waits ``wall_s`` (of which ``queued_s`` in the backend's queue) and ends."""
    bracket = await attributed.open("m")
    time.sleep(wall_s)
    stats.finish(queued_s, late)
    return await bracket.seconds()


async def test_a_run_whose_figures_show_late_is_not_billed_its_queue_time() -> None:
    stats = Statistics()
    attributed = Attribution(stats.read)
    seconds = await run(attributed, stats, queued_s=0.04, late=3)
    assert seconds is not None and seconds < 0.03  # 0.05 s of wall, 0.04 of it queued
    assert stats.reads == 1 + 4  # before; after; three more until the run showed


async def test_an_abandoned_run_ending_meanwhile_does_not_stand_in_for_this_one() -> None:
    """The CI failure of stop 24: a run the gateway hung up on ends inside the next call's
    bracket; its success alone must not end the wait, or the next call is billed its queue."""
    stats = Statistics()
    attributed = Attribution(stats.read)
    orphan = await attributed.open("m")
    orphan.ran()  # abandoned after sending: Triton runs it on
    stats.finish(queued_s=0.0, late=1)  # it ends once the next call is under way
    seconds = await run(attributed, stats, queued_s=0.045, late=2)
    assert seconds is not None and seconds < 0.02


async def test_without_the_wait_it_would_have_been_billed_the_queue() -> None:
    """The same order with the wait switched off bills the queued time: the test above can
    fail."""
    stats = Statistics()
    attributed = Attribution(stats.read)
    orphan = await attributed.open("m")
    orphan.ran()
    stats.finish(queued_s=0.0, late=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attribution, "SETTLE_WAITS", ())
        seconds = await run(attributed, stats, queued_s=0.045, late=2)
    assert seconds is not None and seconds >= 0.045


async def test_a_count_that_never_moves_is_waited_on_once() -> None:
    stats = Statistics()
    attributed = Attribution(stats.read)
    stats.succeeded = 7
    started = time.perf_counter()
    await run(attributed, stats, queued_s=0.0, late=10**9)  # never shows
    assert time.perf_counter() - started >= sum(attribution.SETTLE_WAITS)
    reads = stats.reads
    started = time.perf_counter()
    await run(attributed, stats, queued_s=0.0, late=10**9)
    assert stats.reads == reads + 2 and time.perf_counter() - started < 0.2  # no wait


async def test_a_run_the_backend_never_got_costs_one_wait_then_the_count_is_taken_afresh() -> None:
    stats = Statistics()
    attributed = Attribution(stats.read)
    assert await run(attributed, stats, queued_s=0.0, late=0) is not None
    lost = await attributed.open("m")
    lost.ran()  # the gateway thinks it went out; the backend never counts it
    started = time.perf_counter()
    await run(attributed, stats, queued_s=0.0, late=0)
    assert time.perf_counter() - started >= sum(attribution.SETTLE_WAITS)
    reads = stats.reads
    seconds = await run(attributed, stats, queued_s=0.04, late=1)
    assert seconds is not None and seconds < 0.03  # counted afresh, and still waited for
    assert stats.reads == reads + 3


async def test_a_server_without_a_success_count_is_read_once_after_as_before() -> None:
    stats = Statistics(counts=False)
    attributed = Attribution(stats.read)
    await run(attributed, stats, queued_s=0.0, late=5)
    assert stats.reads == 2


async def test_ran_counts_a_call_once() -> None:
    stats = Statistics()
    attributed = Attribution(stats.read)
    bracket = await attributed.open("m")
    bracket.ran()
    bracket.ran()
    stats.finish(0.0)
    await bracket.seconds()  # one run ended; the count of one is enough: no wait
    assert stats.reads == 2


async def test_a_model_that_meters_itself_reads_no_statistics() -> None:
    stats = Statistics()
    attributed = Attribution(stats.read)
    attributed.learned("m", reported_gpu_seconds=True)
    bracket = await attributed.open("m")
    bracket.ran()
    assert await bracket.seconds() is None and stats.reads == 0

"""What the gateway can bill for a backend that measures nothing (a plain Triton model).

Such a run is billed by time, and the gateway's wall time around the call includes time the
request waited inside the backend — behind another customer's run that a cancel or a timeout
did not stop, say. Billing that would bill one customer for another's work. So the time is
taken from the backend's own statistics where it keeps them (KServe/Triton's statistics
extension: the model's cumulative ``queue`` time): the call's wall time less the queue time the
model accrued meanwhile. A backend without statistics is billed from its first response on
(a stream's first progress event), or — for a single answer — by wall time, the one figure
left; the record says ``metered: false`` either way.

Triton adds a request to its statistics when it releases the request, just after sending the
response; read at once, the statistics may not hold this run's queue time yet (seen in CI: a
run queued 1.4 s behind an abandoned one was billed all of it). So the bracket waits, briefly,
until the model's success count covers every run this gateway saw end — its own, and any it
abandoned that the backend runs on — and reads the queue time then. Runs the backend never got
(a connection that broke before the request went out) or a restarted backend leave that count
short for good: the wait then ends at ``SETTLE_WAITS``' sum and the count is taken afresh; a
backend whose success count never moves is not waited for again. Runs sent to the same model
by others (another replica) can end the wait early, as before this wait existed.

With ``capacity = N`` the gateway sends a model at most N requests at once; when several run
together each one's bracket may also count the others' queue time, which can only lower its
bill (never below zero).

A model that reports ``gpu_seconds`` is learned as one, after which no statistics are read for
it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueueReading:
    """One read of a model's statistics."""

    queue_ns: int  # cumulative time its requests waited in the backend's queue
    succeeded: int | None  # how many requests it completed; None where not reported


ReadQueue = Callable[[str], Awaitable[QueueReading | None]]

# The pauses between reads while a bracket waits for its run to show in the statistics: 0.51 s
# at most, spent only when the count stays short (see the module's docstring). Idle, Triton
# 2.51 shows a run by the first read after its answer (30 of 30 runs, measured).
SETTLE_WAITS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256)


@dataclass(slots=True)
class _RunCount:
    """One model's runs as the gateway saw them end, against the backend's success count."""

    offset: int | None = None  # the backend's success count less ``ended``, learned once
    ended: int = 0
    moves: bool = True  # False once the count stayed still across a run that succeeded


class Bracket:
    """One call's measurement: opened before the request is sent, closed at its end."""

    def __init__(
        self,
        before: QueueReading | None,
        read_queue: ReadQueue | None,
        model: str,
        runs: _RunCount | None = None,
    ) -> None:
        self._before = before
        self._read_queue = read_queue
        self._model = model
        self._runs = runs
        self._ran = False
        self._started = time.perf_counter()
        self._first_response: float | None = None

    def responded(self) -> None:
        """The backend's first response (a progress event) arrived."""
        if self._first_response is None:
            self._first_response = time.perf_counter()

    def since_first_response(self) -> float | None:
        if self._first_response is None:
            return None
        return max(0.0, time.perf_counter() - self._first_response)

    def ran(self) -> None:
        """The backend ran (or runs on with) this request to its end: an answer, or a call the
        gateway abandoned after sending it. Counted once."""
        if self._runs is not None and not self._ran:
            self._ran = True
            self._runs.ended += 1

    async def seconds(self) -> float | None:
        """The attributable seconds of a run that just ended; None when only wall time is
        known."""
        wall = time.perf_counter() - self._started
        self.ran()
        before = self._before
        if before is not None and self._read_queue is not None:
            after = await self._settled_reading()
            if after is not None and after.queue_ns >= before.queue_ns:
                return round(max(0.0, wall - (after.queue_ns - before.queue_ns) / 1e9), 6)
        return self.since_first_response()

    async def _settled_reading(self) -> QueueReading | None:
        assert self._read_queue is not None
        after = await self._read_queue(self._model)
        runs, before = self._runs, self._before
        if runs is None or runs.offset is None or not runs.moves or before is None:
            return after
        target = runs.offset + runs.ended
        for pause in SETTLE_WAITS:
            if after is None or after.succeeded is None or after.succeeded >= target:
                return after
            await asyncio.sleep(pause)
            after = await self._read_queue(self._model)
        if after is not None and after.succeeded is not None and after.succeeded < target:
            if after.succeeded == before.succeeded:
                runs.moves = False  # it succeeded, and the count did not move: not a count
            else:
                runs.offset = after.succeeded - runs.ended
        return after


class Attribution:
    """Per backend: which models meter themselves, and brackets for those that do not."""

    def __init__(self, read_queue: ReadQueue) -> None:
        self._read_queue = read_queue
        self._meters_itself: dict[str, bool] = {}
        self._runs: dict[str, _RunCount] = {}

    async def open(self, model: str) -> Bracket:
        if self._meters_itself.get(model, False):
            return Bracket(None, None, model)
        runs = self._runs.setdefault(model, _RunCount())
        before = await self._read_queue(model)
        if runs.offset is None and before is not None and before.succeeded is not None:
            runs.offset = before.succeeded - runs.ended
        return Bracket(before, self._read_queue, model, runs)

    def learned(self, model: str, reported_gpu_seconds: bool) -> None:
        self._meters_itself[model] = reported_gpu_seconds

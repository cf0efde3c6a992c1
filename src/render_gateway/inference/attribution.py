"""What the gateway can bill for a backend that measures nothing (a plain Triton model).

Such a run is billed by time, and the gateway's wall time around the call includes time the
request waited inside the backend — behind another customer's run that a cancel or a timeout
did not stop, say. Billing that would bill one customer for another's work. So the time is
taken from the backend's own statistics where it keeps them (KServe/Triton's statistics
extension: the model's cumulative ``queue`` time): the call's wall time less the queue time the
model accrued meanwhile. A backend without statistics is billed from its first response on
(a stream's first progress event), or — for a single answer — by wall time, the one figure
left; the record says ``metered: false`` either way.

With ``capacity = N`` the gateway sends a model at most N requests at once; when several run
together each one's bracket may also count the others' queue time, which can only lower its
bill (never below zero).

A model that reports ``gpu_seconds`` is learned as one, after which no statistics are read for
it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

QueueNanos = Callable[[str], Awaitable[int | None]]


class Bracket:
    """One call's measurement: opened before the request is sent, closed at its end."""

    def __init__(self, queue_before: int | None, read_queue: QueueNanos | None, model: str) -> None:
        self._queue_before = queue_before
        self._read_queue = read_queue
        self._model = model
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

    async def seconds(self) -> float | None:
        """The attributable seconds of a run that just ended; None when only wall time is
        known."""
        wall = time.perf_counter() - self._started
        if self._queue_before is not None and self._read_queue is not None:
            after = await self._read_queue(self._model)
            if after is not None and after >= self._queue_before:
                return round(max(0.0, wall - (after - self._queue_before) / 1e9), 6)
        return self.since_first_response()


class Attribution:
    """Per backend: which models meter themselves, and brackets for those that do not."""

    def __init__(self, read_queue: QueueNanos) -> None:
        self._read_queue = read_queue
        self._meters_itself: dict[str, bool] = {}

    async def open(self, model: str) -> Bracket:
        if self._meters_itself.get(model, False):
            return Bracket(None, None, model)
        return Bracket(await self._read_queue(model), self._read_queue, model)

    def learned(self, model: str, reported_gpu_seconds: bool) -> None:
        self._meters_itself[model] = reported_gpu_seconds

"""How far behind its schedule this process's event loop has run lately: the worst lag a
ticker saw over a recent window.

A progress event handled late, and the cancel it triggers sent late, let a run go further past
its budget than the network alone would: with 50 ms steps, a loop 0.2 s behind (a loaded host,
a collection, a burst of writer work) let each run go 4 steps past (tests/api/test_budget_e2e.py
on a loaded machine). The meter charges that many more steps ahead while the loop is behind,
and no more than before while it keeps up — a fixed allowance would stop every short-stepped
run early, and leave part of a small budget unused, on a machine that is not loaded at all.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

TICK_SECONDS = 0.05
WINDOW_SECONDS = 10.0


class LagWindow:
    """The largest lag observed in the last ``window`` seconds (pure: times are passed in).
    A monotonic deque: each sample evicts the smaller ones before it, so the front is the
    window's maximum and every operation is amortised O(1)."""

    def __init__(self, window: float = WINDOW_SECONDS) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()  # (at, lag), lags decreasing

    def observe(self, at: float, lag: float) -> None:
        while self._samples and self._samples[-1][1] <= lag:
            self._samples.pop()
        self._samples.append((at, lag))
        self._expire(at)

    def worst(self, now: float) -> float:
        self._expire(now)
        return self._samples[0][1] if self._samples else 0.0

    def _expire(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()


class LoopLag:
    """Ticks every ``tick`` seconds on the running loop; ``worst()`` is the largest delay past
    a tick's due time in the last window (0.0 before the first tick)."""

    def __init__(
        self,
        tick: float = TICK_SECONDS,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tick, self.clock = tick, clock
        self._lags = LagWindow(window)

    def worst(self) -> float:
        return self._lags.worst(self.clock())

    async def run(self) -> None:
        while True:
            due = self.clock() + self.tick
            await asyncio.sleep(self.tick)
            now = self.clock()
            self._lags.observe(now, max(0.0, now - due))

"""A per-backend circuit breaker: stop sending work to a backend that keeps failing.

Closed, it passes every call and keeps the outcomes of the last ``window_seconds``; once the
window holds at least ``minimum_calls`` outcomes and the failure rate reaches the threshold, it
opens and refuses everything for ``open_seconds``. It then turns half-open and lets one probe
through at a time: a failed probe opens it again, ``half_open_successes`` good probes in a row
close it.

Each admitted call must end in exactly one of ``record_success``, ``record_failure`` or
``release_without_result``. A breaker cannot tell whose report it receives: in half-open any
report while the probe is out is taken as the probe's, and reports while no probe is out (calls
admitted before the breaker opened, finishing late) are ignored.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

Clock = Callable[[], float]


@dataclass(frozen=True)
class BreakerConfig:
    failure_rate_threshold: float = 0.5
    window_seconds: float = 30.0
    minimum_calls: int = 10
    open_seconds: float = 15.0
    half_open_successes: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.failure_rate_threshold <= 1.0:
            raise ValueError(
                f"failure_rate_threshold must be in (0, 1], not {self.failure_rate_threshold}"
            )
        for name in ("window_seconds", "open_seconds"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, not {value}")
        if self.minimum_calls < 1:
            raise ValueError(f"minimum_calls must be at least 1, not {self.minimum_calls}")
        if self.half_open_successes < 1:
            raise ValueError(
                f"half_open_successes must be at least 1, not {self.half_open_successes}"
            )


class BreakerState(StrEnum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


@dataclass(frozen=True)
class BreakerSnapshot:
    """What metrics need: the state, the closed window's counts, and when it last opened."""

    state: BreakerState
    failures: int
    calls: int
    opened_at: float | None


class CircuitBreaker:
    def __init__(self, config: BreakerConfig, clock: Clock = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._state = BreakerState.closed
        # Outcomes in time order, with a running failure count, so each call costs O(1)
        # amortised: every outcome is appended once and popped once.
        self._window: deque[tuple[float, bool]] = deque()
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False
        self._probe_successes = 0

    @property
    def config(self) -> BreakerConfig:
        return self._config

    @property
    def state(self) -> BreakerState:
        # Open → half-open happens on observation, so no timer is needed.
        opened_at = self._opened_at
        if (
            self._state is BreakerState.open
            and opened_at is not None
            and self._clock() - opened_at >= self._config.open_seconds
        ):
            self._state = BreakerState.half_open
            self._probe_in_flight = False
            self._probe_successes = 0
        return self._state

    def try_acquire(self) -> bool:
        state = self.state
        if state is BreakerState.closed:
            return True
        if state is BreakerState.open or self._probe_in_flight:
            return False
        # Half-open: one probe at a time, so a still-broken backend sees a trickle, not a herd.
        self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        state = self.state
        if state is BreakerState.closed:
            self._record(ok=True)
        elif state is BreakerState.half_open and self._probe_in_flight:
            self._probe_in_flight = False
            self._probe_successes += 1
            if self._probe_successes >= self._config.half_open_successes:
                self._close()

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.closed:
            self._record(ok=False)
        elif state is BreakerState.half_open and self._probe_in_flight:
            self._open(self._clock())

    def release_without_result(self) -> None:
        # A cancelled probe says nothing about the backend: free the slot for the next one.
        if self.state is BreakerState.half_open:
            self._probe_in_flight = False

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        if state is BreakerState.closed:
            self._forget_before(self._clock())
        return BreakerSnapshot(state, self._failures, len(self._window), self._opened_at)

    def _record(self, *, ok: bool) -> None:
        now = self._clock()
        self._window.append((now, ok))
        if not ok:
            self._failures += 1
        # Forgetting old successes can raise the rate, so a success is checked as well.
        self._forget_before(now)
        calls = len(self._window)
        if (
            calls >= self._config.minimum_calls
            and self._failures / calls >= self._config.failure_rate_threshold
        ):
            self._open(now)

    def _forget_before(self, now: float) -> None:
        horizon = now - self._config.window_seconds
        while self._window and self._window[0][0] < horizon:
            _, ok = self._window.popleft()
            if not ok:
                self._failures -= 1

    def _open(self, now: float) -> None:
        self._state = BreakerState.open
        self._opened_at = now
        self._reset_counts()

    def _close(self) -> None:
        self._state = BreakerState.closed
        self._opened_at = None
        self._reset_counts()

    def _reset_counts(self) -> None:
        self._window.clear()
        self._failures = 0
        self._probe_in_flight = False
        self._probe_successes = 0

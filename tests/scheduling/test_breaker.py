"""Circuit breaker: the closed window, open refusals, one probe at a time, and a model check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from render_gateway.scheduling.breaker import (
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
)

from support.clock import FakeClock

CLOSED, OPEN, HALF_OPEN = BreakerState.closed, BreakerState.open, BreakerState.half_open


CONFIG = BreakerConfig(
    failure_rate_threshold=0.5,
    window_seconds=30.0,
    minimum_calls=4,
    open_seconds=15.0,
    half_open_successes=2,
)


def _breaker(config: BreakerConfig = CONFIG) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(config, clock=clock), clock


def _call(breaker: CircuitBreaker, *, ok: bool) -> None:
    assert breaker.try_acquire()
    if ok:
        breaker.record_success()
    else:
        breaker.record_failure()


def _tripped() -> tuple[CircuitBreaker, FakeClock]:
    breaker, clock = _breaker()
    for _ in range(CONFIG.minimum_calls):
        _call(breaker, ok=False)
    assert breaker.state is OPEN
    return breaker, clock


# ---------------------------------------------------------------------------------- closed


def test_starts_closed_and_admits() -> None:
    breaker, _ = _breaker()
    assert breaker.state is CLOSED
    assert breaker.try_acquire()
    assert breaker.snapshot() == BreakerSnapshot(CLOSED, 0, 0, None)


def test_stays_closed_below_minimum_calls_even_at_full_failure() -> None:
    breaker, _ = _breaker()
    for _ in range(CONFIG.minimum_calls - 1):
        _call(breaker, ok=False)
    assert breaker.state is CLOSED
    assert breaker.snapshot() == BreakerSnapshot(CLOSED, 3, 3, None)


def test_opens_exactly_when_threshold_is_reached_with_enough_calls() -> None:
    breaker, clock = _breaker()
    # 1 failure in 4 calls, then 2 in 5: below 0.5 with enough volume.
    for ok in (True, True, True, False, False):
        _call(breaker, ok=ok)
        assert breaker.state is CLOSED
    _call(breaker, ok=False)  # 3 failures in 6 calls = 0.5
    assert breaker.state is OPEN
    assert breaker.snapshot() == BreakerSnapshot(OPEN, 0, 0, clock.now)


def test_outcomes_older_than_the_window_are_forgotten() -> None:
    breaker, clock = _breaker()
    for _ in range(3):
        _call(breaker, ok=False)
    clock.advance(CONFIG.window_seconds + 0.001)
    assert breaker.snapshot().calls == 0
    # Had the three old failures been kept, this fourth would open the breaker.
    _call(breaker, ok=False)
    assert breaker.state is CLOSED
    assert breaker.snapshot() == BreakerSnapshot(CLOSED, 1, 1, None)


def test_outcomes_exactly_window_seconds_old_are_kept() -> None:
    breaker, clock = _breaker()
    for _ in range(3):
        _call(breaker, ok=False)
    clock.advance(CONFIG.window_seconds)
    _call(breaker, ok=False)
    assert breaker.state is OPEN


def test_forgetting_old_successes_can_open_on_a_success() -> None:
    breaker, clock = _breaker(BreakerConfig(failure_rate_threshold=0.6, minimum_calls=4))
    for _ in range(3):
        _call(breaker, ok=True)
    clock.advance(20)
    for _ in range(3):
        _call(breaker, ok=False)  # 3 of 6 = 0.5, below 0.6
    assert breaker.state is CLOSED
    clock.advance(11)  # the three successes age out as a new one comes in: 3 of 4
    _call(breaker, ok=True)
    assert breaker.state is OPEN


# ------------------------------------------------------------------------------------ open


def test_open_refuses_until_open_seconds_pass() -> None:
    breaker, clock = _tripped()
    assert not breaker.try_acquire()
    clock.advance(CONFIG.open_seconds - 0.001)
    assert breaker.state is OPEN
    assert not breaker.try_acquire()
    clock.advance(0.001)
    assert breaker.state is HALF_OPEN


def test_late_reports_while_open_are_ignored() -> None:
    breaker, clock = _tripped()
    opened_at = clock.now
    breaker.record_failure()
    breaker.record_success()
    assert breaker.snapshot() == BreakerSnapshot(OPEN, 0, 0, opened_at)


# ------------------------------------------------------------------------------- half-open


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker, clock = _tripped()
    clock.advance(CONFIG.open_seconds)
    assert breaker.try_acquire()
    assert not breaker.try_acquire()
    assert not breaker.try_acquire()
    breaker.record_success()
    assert breaker.state is HALF_OPEN
    assert breaker.try_acquire()
    assert not breaker.try_acquire()


def test_probe_failure_opens_again_with_a_fresh_timeout() -> None:
    breaker, clock = _tripped()
    clock.advance(CONFIG.open_seconds + 5)
    assert breaker.try_acquire()
    breaker.record_failure()
    assert breaker.state is OPEN
    assert breaker.snapshot().opened_at == clock.now
    clock.advance(CONFIG.open_seconds - 0.001)
    assert not breaker.try_acquire()
    clock.advance(0.001)
    assert breaker.try_acquire()


def test_enough_probe_successes_close_with_an_empty_window() -> None:
    breaker, clock = _tripped()
    clock.advance(CONFIG.open_seconds)
    for _ in range(CONFIG.half_open_successes):
        assert breaker.state is HALF_OPEN
        _call(breaker, ok=True)
    assert breaker.snapshot() == BreakerSnapshot(CLOSED, 0, 0, None)
    # A fresh window: it takes minimum_calls new failures to open again.
    for _ in range(CONFIG.minimum_calls - 1):
        _call(breaker, ok=False)
    assert breaker.state is CLOSED


def test_release_without_result_frees_the_probe_slot_without_counting() -> None:
    breaker, clock = _tripped()
    clock.advance(CONFIG.open_seconds)
    assert breaker.try_acquire()
    breaker.release_without_result()
    assert breaker.try_acquire()
    breaker.release_without_result()
    # Two released probes did not count as successes: it still takes two to close.
    _call(breaker, ok=True)
    assert breaker.state is HALF_OPEN
    _call(breaker, ok=True)
    assert breaker.state is CLOSED


def test_reports_with_no_probe_out_are_ignored_in_half_open() -> None:
    breaker, clock = _tripped()
    clock.advance(CONFIG.open_seconds)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_success()
    assert breaker.state is HALF_OPEN
    assert breaker.try_acquire()


def test_release_without_result_when_closed_changes_nothing() -> None:
    breaker, _ = _breaker()
    _call(breaker, ok=False)
    breaker.release_without_result()
    assert breaker.snapshot() == BreakerSnapshot(CLOSED, 1, 1, None)


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_rate_threshold", 0.0),
        ("failure_rate_threshold", -0.1),
        ("failure_rate_threshold", 1.01),
        ("failure_rate_threshold", float("nan")),
        ("window_seconds", 0.0),
        ("window_seconds", -1.0),
        ("window_seconds", float("inf")),
        ("open_seconds", 0.0),
        ("open_seconds", float("nan")),
        ("minimum_calls", 0),
        ("half_open_successes", 0),
    ],
)
def test_config_validation_names_the_field(field: str, value: float) -> None:
    changes: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        BreakerConfig(**changes)


def test_config_accepts_a_threshold_of_one() -> None:
    assert BreakerConfig(failure_rate_threshold=1.0).failure_rate_threshold == 1.0


# ----------------------------------------------------------------------- model-based check


@dataclass
class Model:
    """The breaker as plainly as it can be said: a list for the window, no running counts."""

    config: BreakerConfig
    state: BreakerState = CLOSED
    window: list[tuple[float, bool]] = field(default_factory=list)
    opened_at: float | None = None
    probe_out: bool = False
    probe_successes: int = 0

    def observe(self, now: float) -> BreakerState:
        assert self.opened_at is not None or self.state is CLOSED
        opened_at = self.opened_at
        if (
            self.state is OPEN
            and opened_at is not None
            and now - opened_at >= self.config.open_seconds
        ):
            self.state, self.probe_out, self.probe_successes = HALF_OPEN, False, 0
        return self.state

    def live_window(self, now: float) -> list[tuple[float, bool]]:
        return [(t, ok) for t, ok in self.window if t >= now - self.config.window_seconds]

    def acquire(self, now: float) -> bool:
        state = self.observe(now)
        if state is CLOSED:
            return True
        if state is OPEN or self.probe_out:
            return False
        self.probe_out = True
        return True

    def report(self, now: float, *, ok: bool) -> None:
        state = self.observe(now)
        if state is CLOSED:
            self.window = [*self.live_window(now), (now, ok)]
            failures = sum(1 for _, good in self.window if not good)
            if (
                len(self.window) >= self.config.minimum_calls
                and failures / len(self.window) >= self.config.failure_rate_threshold
            ):
                self._open(now)
        elif state is HALF_OPEN and self.probe_out:
            self.probe_out = False
            if not ok:
                self._open(now)
                return
            self.probe_successes += 1
            if self.probe_successes >= self.config.half_open_successes:
                self.state, self.window, self.opened_at = CLOSED, [], None

    def release(self, now: float) -> None:
        if self.observe(now) is HALF_OPEN:
            self.probe_out = False

    def snapshot(self, now: float) -> BreakerSnapshot:
        state = self.observe(now)
        live = self.live_window(now) if state is CLOSED else []
        failures = sum(1 for _, ok in live if not ok)
        return BreakerSnapshot(state, failures, len(live), self.opened_at)

    def _open(self, now: float) -> None:
        self.state, self.opened_at, self.window = OPEN, now, []
        self.probe_out, self.probe_successes = False, 0


ALLOWED_MOVES = {
    (CLOSED, OPEN),
    (OPEN, HALF_OPEN),
    (HALF_OPEN, CLOSED),
    (HALF_OPEN, OPEN),
}


class BreakerMachine(RuleBasedStateMachine):
    @initialize(
        threshold=st.sampled_from([0.25, 0.5, 0.6, 1.0]),
        window=st.sampled_from([1.0, 5.0, 10.0]),
        minimum_calls=st.integers(1, 5),
        open_seconds=st.sampled_from([1.0, 3.0, 7.5]),
        half_open_successes=st.integers(1, 3),
    )
    def setup(
        self,
        threshold: float,
        window: float,
        minimum_calls: int,
        open_seconds: float,
        half_open_successes: int,
    ) -> None:
        config = BreakerConfig(threshold, window, minimum_calls, open_seconds, half_open_successes)
        self.clock = FakeClock(0.0)
        self.breaker = CircuitBreaker(config, clock=self.clock)
        self.model = Model(config)
        self.last_state = CLOSED
        self.last_opened_at: float | None = None

    @rule()
    def acquire(self) -> None:
        # Check the safety claims against the clock directly, not only against the model.
        opened_at = self.model.opened_at
        was_half_open_with_probe = (
            self.model.observe(self.clock.now) is HALF_OPEN and self.model.probe_out
        )
        admitted = self.breaker.try_acquire()
        assert admitted == self.model.acquire(self.clock.now)
        if self.model.state is OPEN and opened_at is not None:
            assert not admitted
            assert self.clock.now - opened_at < self.model.config.open_seconds
        if was_half_open_with_probe:
            assert not admitted

    @rule(ok=st.booleans())
    def report(self, ok: bool) -> None:
        if ok:
            self.breaker.record_success()
        else:
            self.breaker.record_failure()
        self.model.report(self.clock.now, ok=ok)

    @rule()
    def release(self) -> None:
        self.breaker.release_without_result()
        self.model.release(self.clock.now)

    @rule(
        seconds=st.one_of(
            st.sampled_from([0.0, 0.5, 1.0, 2.5, 3.0, 5.0, 7.5, 10.0]),
            st.floats(0.0, 12.0, allow_nan=False),
        )
    )
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def matches_the_model(self) -> None:
        snapshot = self.breaker.snapshot()
        assert snapshot == self.model.snapshot(self.clock.now)
        if snapshot.state is not self.last_state:
            assert (self.last_state, snapshot.state) in ALLOWED_MOVES
        elif snapshot.state is OPEN:
            # Every step is observed, so re-opening always shows as half-open first.
            assert snapshot.opened_at == self.last_opened_at
        self.last_state, self.last_opened_at = snapshot.state, snapshot.opened_at


BreakerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_breaker_matches_its_model = BreakerMachine.TestCase

"""The loop-lag window (against a brute-force maximum) and the ticker on a real event loop."""

from __future__ import annotations

import asyncio
import time

from hypothesis import given
from hypothesis import strategies as st

from render_gateway.metering.loop_lag import LagWindow, LoopLag

samples = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), st.floats(0, 1, allow_nan=False)), max_size=60
)


@given(samples)
def test_the_window_answers_the_largest_lag_of_its_last_seconds(
    steps: list[tuple[float, float]],
) -> None:
    window, seen, now = LagWindow(window=2.0), list[tuple[float, float]](), 0.0
    for gap, lag in steps:
        now += gap
        window.observe(now, lag)
        seen.append((now, lag))
        expected = max((late for at, late in seen if at >= now - 2.0), default=0.0)
        assert window.worst(now) == expected
    later = now + 2.5
    assert window.worst(later) == 0.0  # everything has aged out


async def test_a_blocked_loop_is_seen_and_then_forgotten() -> None:
    lag = LoopLag(tick=0.02, window=0.5)
    ticker = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0.1)
        time.sleep(0.6)  # the loop is held: the tick due meanwhile runs ~0.6 s late
        await asyncio.sleep(0.1)
        assert lag.worst() >= 0.5
        await asyncio.sleep(1.0)  # past the window, with the loop free again
        assert lag.worst() < 0.5
    finally:
        ticker.cancel()

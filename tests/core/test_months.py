"""Budget periods: a moment's UTC calendar month."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import example, given, settings
from hypothesis import strategies as st

from render_gateway.core.months import month_of


def test_month_is_the_utc_calendar_month() -> None:
    assert month_of(1_764_547_199.0) == "2025-11"  # 2025-11-30T23:59:59Z
    assert month_of(1_764_547_200.0) == "2025-12"


@settings(max_examples=500)
@example(-2e-55)  # rounds to 1970-01-01T00:00:00 on the calendar, below it in float
@given(st.floats(min_value=-2_000_000_000, max_value=253_402_300_799, allow_nan=False))
def test_the_remembered_month_answers_as_the_calendar_does(moment: float) -> None:
    """Asked in any order (the cache of the last month must never answer for another)."""
    expected = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m")
    assert month_of(moment) == expected
    assert month_of(moment) == expected  # again, from the remembered month


def test_month_edges_in_both_directions() -> None:
    for edge in (1_764_547_200.0, 1_767_225_600.0):  # 2025-12-01, 2026-01-01 (a year's end)
        assert month_of(edge - 0.001) != month_of(edge)
        assert month_of(edge) == datetime.fromtimestamp(edge, UTC).strftime("%Y-%m")
        assert month_of(edge - 1e-6) == datetime.fromtimestamp(edge - 1, UTC).strftime("%Y-%m")

"""Budget periods: a moment's UTC calendar month."""

from __future__ import annotations

from render_gateway.core.months import month_of


def test_month_is_the_utc_calendar_month() -> None:
    assert month_of(1_764_547_199.0) == "2025-11"  # 2025-11-30T23:59:59Z
    assert month_of(1_764_547_200.0) == "2025-12"

"""Budget periods: a moment's UTC calendar month."""

from __future__ import annotations

from datetime import UTC, datetime

# The last month asked for, as [start, end) in epoch seconds and its name: every request asks
# (admission, settle, the usage log) and nearly all ask for this month, which answers in a
# comparison instead of a datetime and a strftime (~4 µs, about 2 % of a sync request's loop).
_last: tuple[float, float, str] = (0.0, 0.0, "")


def month_of(moment: float) -> str:
    """The budget period of a moment: its UTC calendar month, e.g. ``2026-11``."""
    global _last
    start, end, name = _last
    # A microsecond clear of either edge: the calendar rounds a moment to the microsecond.
    if start + 1e-6 <= moment < end - 1e-6:
        return name
    at = datetime.fromtimestamp(moment, UTC)
    first = datetime(at.year, at.month, 1, tzinfo=UTC)
    name = f"{at.year:04d}-{at.month:02d}"
    try:
        end = datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC).timestamp()
    except ValueError:  # December of year 9999: no month follows
        end = float("inf")
    _last = (first.timestamp(), end, name)
    return name


def previous_month(month: str) -> str:
    """The period before ``month`` (``YYYY-MM``): ``2026-01`` → ``2025-12``."""
    year, number = (int(part) for part in month.split("-"))
    return f"{year - 1}-12" if number == 1 else f"{year}-{number - 1:02d}"

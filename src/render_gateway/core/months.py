"""Budget periods: a moment's UTC calendar month."""

from __future__ import annotations

from datetime import UTC, datetime


def month_of(moment: float) -> str:
    """The budget period of a moment: its UTC calendar month, e.g. ``2026-11``."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m")


def previous_month(month: str) -> str:
    """The period before ``month`` (``YYYY-MM``): ``2026-01`` → ``2025-12``."""
    year, number = (int(part) for part in month.split("-"))
    return f"{year - 1}-12" if number == 1 else f"{year}-{number - 1:02d}"

"""Budget periods: a moment's UTC calendar month."""

from __future__ import annotations

from datetime import UTC, datetime


def month_of(moment: float) -> str:
    """The budget period of a moment: its UTC calendar month, e.g. ``2026-11``."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m")

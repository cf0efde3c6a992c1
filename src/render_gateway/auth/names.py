"""Customer ids and plan names: short, and made of characters that need no escaping anywhere."""

from __future__ import annotations

import re

# They end up in SQL rows, metric labels, log lines and signed usage claims.
_NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


def is_valid_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_name(kind: str, value: str) -> str:
    """``value`` unchanged if valid, else ValueError naming ``kind`` (not echoing ``value``)."""
    if not is_valid_name(value):
        raise ValueError(f"{kind} must be 1–128 characters from A-Z a-z 0-9 _ . : @ -")
    return value

"""The request headers peers use to say how a request should wait (HTTP parsing only).

* ``Prefer`` (RFC 7240): ``wait=N`` on ``POST /queue`` — answer with the ended job if it ends
  within N seconds (at most ``MAX_WAIT_S``; bare ``wait`` is the maximum), else 202 as
  without it (Replicate's convention); ``respond-async`` on a sync route — queue it instead and
  answer 202. Preferences this server does not know, or malformed ones, are ignored, as the
  RFC says; the one applied is named in ``Preference-Applied``.
* ``Cancel-After`` (Replicate's): a duration — ``90``, ``90s``, ``1.5m``, ``1h30m`` — after which a
  job that has not started ends ``cancelled`` (``deadline_exceeded``), unbilled: the same as
  the body's ``start_deadline`` (seconds). Malformed: 400; below 1 s or above a day: clamped
  to those (``CANCEL_AFTER_PATTERN`` is the form, in the OpenAPI document too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_WAIT_S = 60
MIN_DEADLINE_S, MAX_DEADLINE_S = 1.0, 86400.0
# No surrounding whitespace: the HTTP server strips it before the app sees the value (RFC 9110
# OWS), so a pattern and a length that counted it would promise what nothing can check.
CANCEL_AFTER_PATTERN = r"^(\d+(\.\d+)?|(\d+(\.\d+)?(ms|s|m|h))+)$"
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(ms|s|m|h))")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Preferences:
    wait_seconds: int | None = None  # Prefer: wait[=N]
    respond_async: bool = False  # Prefer: respond-async


def parse_prefer(values: list[str]) -> Preferences:
    """The preferences of every ``Prefer`` header (comma-separated tokens, each
    ``name[=value]`` with optional ``; parameters``); the first of a name counts."""
    wait: int | None = None
    respond_async = False
    seen: set[str] = set()
    for header in values:
        for token in header.split(","):
            name, _, value = token.split(";", 1)[0].strip().partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if not name or name in seen:
                continue
            seen.add(name)
            if name == "wait":
                if not value:
                    wait = MAX_WAIT_S
                elif value.isdigit():
                    wait = min(int(value), MAX_WAIT_S)
            elif name == "respond-async" and not value:
                respond_async = True
    return Preferences(wait if wait else None, respond_async)


def parse_duration(text: str) -> float:
    """Seconds in a ``Cancel-After`` value; ValueError (saying why) when it is not one."""
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    elif text and _DURATION.sub("", text) == "":
        seconds = sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(text))
    else:
        raise ValueError("Cancel-After is a duration: seconds, or like 30s, 5m, 1h30m")
    # Clamped, not refused: a client asking for "0" or "48h" gets the nearest deadline served.
    return min(max(seconds, MIN_DEADLINE_S), MAX_DEADLINE_S)

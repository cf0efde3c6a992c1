"""Why a use case turned a request away, in the application's own terms.

A use case raises ``Refused`` with a kind (what sort of no it is), a stable code and a short
message a customer may read; the HTTP package maps kinds to status codes and the rate-limit
state to headers. Nothing here knows about HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class RefusalKind(StrEnum):
    invalid = "invalid"  # the request itself is wrong (400)
    not_found = "not_found"  # the model, backend or job does not exist for this caller (404)
    forbidden = "forbidden"  # the caller's plan may not do this (403)
    conflict = "conflict"  # the state does not allow it (409)
    timeout = "timeout"  # the request's body did not arrive in time (408)
    gone = "gone"  # it was valid and has lapsed for good: an expired upload URL (410)
    payment = "payment"  # the budget does not allow it (402)
    too_many = "too_many"  # rate limit or queue quota (429)
    unavailable = "unavailable"  # no capacity now (503)
    upstream = "upstream"  # the backend failed the request (502)


@dataclass(frozen=True)
class RateInfo:
    """A rate-limit decision as the caller is told it."""

    limit: int
    remaining: int
    reset_seconds: int
    retry_after_seconds: int | None = None  # only when refused

    @classmethod
    def of(
        cls, capacity: float, remaining: float, reset_after: float, retry_after: float | None
    ) -> RateInfo:
        retry = None
        if retry_after is not None:
            retry = math.ceil(retry_after) if math.isfinite(retry_after) else 3600
        return cls(int(capacity), max(0, math.floor(remaining)), math.ceil(reset_after), retry)


class Refused(Exception):
    def __init__(
        self,
        kind: RefusalKind,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        retry_after_seconds: int | None = None,
        rate: RateInfo | None = None,
    ) -> None:
        super().__init__(message)
        self.kind, self.code, self.message = kind, code, message
        self.details = details or {}
        self.retry_after_seconds = retry_after_seconds
        self.rate = rate

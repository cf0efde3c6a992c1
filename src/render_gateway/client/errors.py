"""The client's errors: one per kind of refusal, each built from the gateway's JSON error body
``{"error", "message", "request_id", "details"}``."""

from __future__ import annotations

from typing import Any

import httpx


class RenderError(Exception):
    """A call the gateway refused or could not answer. ``status`` is the HTTP status (None when
    no answer came), ``code`` the gateway's machine code (``rate_limited``, ``job_not_found``,
    …), ``request_id`` the ``X-Request-Id`` to quote to the operator."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "unknown",
        request_id: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.details = details or {}
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (HTTP {self.status}, {self.request_id})" if self.status is not None else ""
        return f"{self.code}: {self.message}{where}"


class RenderConnectionError(RenderError):
    """No answer: the gateway could not be reached, or the connection broke."""


class InvalidRequestError(RenderError):
    """400/422: the request breaks the contract (``details`` names the field when it can)."""


class AuthenticationError(RenderError):
    """401: missing, invalid, revoked or expired credentials."""


class PaymentRequiredError(RenderError):
    """402: the monthly budget is spent (``budget_exceeded``) or ran out mid-run."""


class PermissionDeniedError(RenderError):
    """403: authenticated, but not allowed (a priority or another customer's usage)."""


class NotFoundError(RenderError):
    """404: unknown, or not yours (the gateway does not tell the two apart)."""


class ConflictError(RenderError):
    """409: the job is finished (cancel), not complete (output), or an idempotency conflict."""


class RateLimitError(RenderError):
    """429 after the client's retries: rate limit, queue quota or queue full."""


class UnavailableError(RenderError):
    """503 after the client's retries: no capacity, or a store the gateway needs is down."""


class ServerError(RenderError):
    """Any other 5xx: the gateway or its backend failed (``backend_error``, ``internal``…)."""


class WaitTimeout(RenderError, TimeoutError):
    """``Job.wait`` gave up before the job ended; the job goes on."""


_BY_STATUS: dict[int, type[RenderError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: PaymentRequiredError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: UnavailableError,
}


def retry_after_of(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds when it is a number (the gateway sends only those)."""
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def error_from(response: httpx.Response) -> RenderError:
    """The typed error for a response that is not the one asked for."""
    request_id = response.headers.get("x-request-id")
    code, message = f"http_{response.status_code}", response.reason_phrase
    details: dict[str, Any] = {}
    try:
        body = response.json()
    except ValueError:  # not JSON (a proxy's page): keep the status's own words
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = body["error"]
        message = str(body.get("message") or message)
        request_id = body.get("request_id") or request_id
        found = body.get("details")
        details = found if isinstance(found, dict) else {}
    kind = _BY_STATUS.get(response.status_code)
    if kind is None:
        kind = ServerError if response.status_code >= 500 else RenderError
    return kind(
        message,
        status=response.status_code,
        code=code,
        request_id=request_id,
        details=details,
        retry_after=retry_after_of(response),
    )

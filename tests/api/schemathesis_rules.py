"""Schemathesis hook (loaded with SCHEMATHESIS_HOOKS by test_openapi_fuzz.py): the rules of the
document that OpenAPI cannot state, each written in the document's descriptions and API.md.

* Usage, dashboard, series and reconciliation ranges ``[from, to)`` must run forwards and span
  at most 366 days. OpenAPI bounds each parameter, not one against the other.
* A usage series' ``bucket`` must make at most 10080 points over its range (one parameter
  against two others).
* ``GET /usage/records`` takes exactly one of ``job_id`` and ``request_id``: OpenAPI cannot
  make two query parameters exclusive.
* ``format`` must be one the model offers for the task: the live catalog (GET /models) says
  which, e.g. i2i takes none; the document can only list the modality's formats.
* ``size`` of ``POST /v1/images/generations``, ``/v1/images/edits`` and ``/v1/videos`` must fit
  the sides the model's backends take (their metadata's ``min_side``, ``max_side``,
  ``size_multiple``): the live catalog, not a pattern. Those routes' errors are OpenAI's
  ``{"error": {"code", "param", …}}``.
* The ``image``/``mask`` files of ``POST /v1/images/edits`` and the ``input_reference`` file
  of ``POST /v1/videos`` must be PNG, JPEG or WebP bytes; the document can only say
  ``format: binary``.
* ``POST /v1/videos`` takes one reference image: the ``input_reference`` file or the
  ``input_reference[image_url]`` field, not both (a ``not`` in the form's schema breaks
  schemathesis's coverage phase on binary parts).
* ``GET /jobs``: ``from`` must come before ``to`` (no span limit, no defaults), and ``after``
  must be a job of the listing's scope: a text that is not even a job id's shape (``j_`` and
  17 base62 characters) is none.
* ``webhook`` must go where the operator's policy allows (https, public addresses after DNS,
  ``allowed_hosts``): configuration and DNS, not a pattern.

A schema-valid request that breaks one gets its 400 (test_usage_e2e.py, test_bad_input_e2e.py,
test_webhook_policy_e2e.py and test_gateway_e2e.py check the refusals). This drops exactly
those ``positive_data_acceptance`` failures: a 400 whose code names the rule, for a request
that, read independently here, does break it. Every other 400 still fails the run.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData

MAX_SPAN = timedelta(days=366)
JOB_ID = re.compile(r"j_[0-9A-Za-z]{17}")  # core/ids.py's new_job_id
BUCKET_SECONDS = {"minute": 60, "hour": 3600, "day": 86_400}
MAX_BUCKETS = 7 * 24 * 60
# Operation → (where its range is, days before ``to`` that ``from`` defaults to).
RANGED = {
    ("GET", "/usage"): ("query", 30),
    ("GET", "/usage/dashboard"): ("query", 1),
    ("GET", "/usage/series"): ("query", 1),
    ("POST", "/reconciliations"): ("body", 30),
}


def _instant(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def range_is_broken(where: str, default_days: int, values: Any) -> bool:
    """Whether ``from``/``to`` (with the documented defaults) run backwards or span too long."""
    if not isinstance(values, dict):
        return False
    start_text, end_text = values.get("from"), values.get("to")
    if where == "body" and start_text is None and end_text is None:
        return False  # reconciliation's default: the last closed window
    end = _instant(end_text) if end_text is not None else datetime.now(UTC)
    start = _instant(start_text) if start_text is not None else None
    if end is None or (start_text is not None and start is None):
        return False  # not a parsable instant: that 400 is not this rule's
    start = _start(start, end, default_days)
    return start is None or start >= end or end - start > MAX_SPAN


def _start(start: datetime | None, end: datetime, default_days: int) -> datetime | None:
    """``from`` or its default; None when there is no instant that far before ``to``."""
    if start is not None:
        return start
    try:
        return end - timedelta(days=default_days)
    except OverflowError:
        return None  # e.g. to=0001-01-01


def too_many_buckets(values: Any) -> bool:
    """Whether a series' explicit ``bucket`` makes more than MAX_BUCKETS points."""
    if not isinstance(values, dict) or values.get("bucket") not in BUCKET_SECONDS:
        return False
    end = _instant(values["to"]) if values.get("to") is not None else datetime.now(UTC)
    if end is None:
        return False
    start = _start(_instant(values.get("from")), end, 1)
    if start is None:
        return False
    span = (end - start).total_seconds()
    return span / BUCKET_SECONDS[values["bucket"]] > MAX_BUCKETS


def _error(response: Any) -> tuple[str | None, dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        return None, {}
    if not isinstance(body, dict):
        return None, {}
    details = body.get("details")
    return body.get("error"), details if isinstance(details, dict) else {}


def size_breaks_limits(size: Any, limits: dict[str, Any]) -> bool:
    """Whether a ``WIDTHxHEIGHT`` falls outside the side limits the 400 reported."""
    if not isinstance(size, str) or "x" not in size:
        return False
    low, high, multiple = (
        limits.get("min_side"),
        limits.get("max_side"),
        limits.get("size_multiple"),
    )
    for text in size.split("x"):
        side = int(text)
        if (low is not None and side < low) or (high is not None and side > high):
            return True
        if multiple and side % multiple:
            return True
    return False


def is_image(data: Any) -> bool:
    """Whether the bytes are PNG, JPEG or WebP (read by their magic, as the gateway does)."""
    if isinstance(data, str):
        data = data.encode("latin-1", "replace")
    if not isinstance(data, bytes | bytearray):
        return False
    riff_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")) or riff_webp


def _openai_error(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def breaks_a_stated_rule(case: Any, response: Any) -> bool:
    """Whether ``response`` is the 400 of a rule above, for a request that breaks it."""
    if response.status_code != 400:
        return False
    operation = (case.operation.method.upper(), case.operation.path)
    if operation in (("POST", "/v1/images/edits"), ("POST", "/v1/videos")):
        message = str(_openai_error(response).get("message", ""))
        field = message.split(":", 1)[0]
        body = case.body if isinstance(case.body, dict) else {}
        unreadable = message.endswith(": not a PNG, JPEG or WebP image") and field in body
        if unreadable and not is_image(body[field]):
            return True
        both = {"input_reference", "input_reference[image_url]"} <= set(body)
        if both and message.startswith("input_reference: send one image"):
            return True
    if operation in (("POST", "/v1/images/generations"), ("POST", "/v1/images/edits"),
                     ("POST", "/v1/videos")):  # fmt: skip
        # OpenAI's error has no details: the limits are read from its message (catalog.py's
        # "takes sides MIN–MAX, multiples of M"), and the size judged against them here.
        error = _openai_error(response)
        found = re.search(r"takes sides (\d+)–(\d+|any)(?:, multiples of (\d+))?",
                          str(error.get("message", "")))  # fmt: skip
        if error.get("code") != "size_not_offered" or found is None:
            return False
        low, high, multiple = found.groups()
        limits = {"min_side": int(low), "max_side": None if high == "any" else int(high),
                  "size_multiple": int(multiple) if multiple else None}  # fmt: skip
        size = case.body.get("size") if isinstance(case.body, dict) else None
        return size_breaks_limits(size, limits)
    code, details = _error(response)
    if operation == ("GET", "/usage/records") and code == "invalid_request":
        query = case.query or {}
        return ("job_id" in query) == ("request_id" in query)
    series = operation == ("GET", "/usage/series")
    if series and code == "invalid_request" and too_many_buckets(case.query):
        return True
    if operation in RANGED and code == "invalid_request":
        where, default_days = RANGED[operation]
        return range_is_broken(where, default_days, case.query if where == "query" else case.body)
    if code == "format_not_offered":
        asked = (case.query or {}).get("format") or (
            case.body.get("format") if isinstance(case.body, dict) else None
        )
        offered = details.get("offered")
        return asked is not None and isinstance(offered, list) and asked not in offered
    if operation == ("GET", "/jobs"):
        query = case.query or {}
        if code == "job_not_found" and details.get("field") == "after":
            return not JOB_ID.fullmatch(str(query.get("after", "")))
        if code == "invalid_request" and details.get("field") == "from":
            start, end = _instant(query.get("from")), _instant(query.get("to"))
            return start is not None and end is not None and start >= end
    if operation == ("POST", "/queue") and code == "invalid_request":
        webhook = case.body.get("webhook") if isinstance(case.body, dict) else None
        return webhook is not None and details.get("field") == "webhook"
    return False


@schemathesis.hook
def filter_failure(ctx: Any, failure: Any, case: Any, response: Any) -> bool:
    """False (drop the failure) only for a stated rule's 400 to a request that breaks it."""
    if not isinstance(failure, RejectedPositiveData):
        return True
    return not breaks_a_stated_rule(case, response)

"""Route keys: which backends a job needs, as one string a shared queue can compare."""

from __future__ import annotations


def route_key_of(family: str, model: str, backend_type: str | None) -> str:
    """``family/model/backend-type`` (empty type: any backend of the family serving the model).
    The same format as ``core.jobs.route_key`` of a job's request."""
    return f"{family}/{model}/{backend_type or ''}"

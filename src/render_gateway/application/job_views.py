"""The job's public JSON (GET /jobs/{id}, and the webhook payload), from a Job and live state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from render_gateway.core.jobs import Job, JobStatus
from render_gateway.core.usage_records import NANOS


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def job_view(
    job: Job,
    position: int | None,
    progress: float,
    eta_seconds: float | None,
    *,
    asset_url: Callable[[str], str],
) -> dict[str, Any]:
    """``asset_url`` turns an asset id into the URL handed out for it (a signed, expiring one:
    whoever receives the view, a webhook receiver included, can fetch the output with it)."""
    if job.status is JobStatus.complete:
        progress = 1.0
    elif job.status is JobStatus.queued:
        progress = 0.0
    outputs = [asset_url(asset) for asset in job.outputs]
    error = job.error
    return {
        "id": job.id,
        "status": job.status.value,
        "position": position,
        "progress": progress,
        "eta_seconds": eta_seconds,
        "output": outputs[0] if outputs else None,
        "outputs": outputs,
        "seed": job.seed,
        "retries": job.retries,
        "error": None
        if error is None
        else {"code": error.code, "message": error.message, "retriable": error.retriable},
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "request": job.request,
        "usage": usage_view(job.extra.get("usage")),
    }


def usage_view(record: Any) -> dict[str, Any] | None:
    if not isinstance(record, dict):
        return None
    return {
        "status": record["status"],
        "gpu_seconds": record["gpu_seconds"],
        # False: the backend measured nothing; gpu_seconds is what the gateway attributed
        "metered": bool(record.get("metered", True)),
        "billable": record["billable"],
        "cost": record["cost_nanos"] / NANOS,
        "currency": record["currency"],
    }

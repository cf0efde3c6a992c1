"""Reads over many jobs, for a console or a script: the job list, a job's timeline and the
queue's state (admins).

``GET /jobs`` answers every job as ``GET /jobs/{id}`` does, plus its ``customer_id``. A customer
lists their own jobs; naming another customer (or none, to list everyone's) takes an admin.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from render_gateway.api.api_models import (
    ERROR_RESPONSES,
    INSTANT,
    JobList,
    JobTimeline,
    QueueStats,
)
from render_gateway.api.deps import caller, is_admin, require_admin, services
from render_gateway.api.http import ApiError
from render_gateway.application.refusals import RefusalKind
from render_gateway.auth.principal import Principal
from render_gateway.core.jobs import JobStatus
from render_gateway.metering.queries import QueryError, parse_instant
from render_gateway.stores.jobs import JobFilter, QueueSnapshot

router = APIRouter()

# ``family/model`` as the job's request names them (``request.family``, ``request.model``).
# A usage record's ``model_name`` is ``modality/family/model``: drop the modality to filter by it.
MODEL_PATTERN = r"^[^/\s]+/[^/\s]+$"


@router.get(
    "/jobs",
    response_model=JobList,
    responses=ERROR_RESPONSES,
    summary="Your jobs, newest first (a cursor page)",
)
async def list_jobs(
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    customer_id: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=128,
            description="whose jobs: yours by default; another customer's (or, left out by an "
            "admin, everyone's) takes an admin",
        ),
    ] = None,
    status: Annotated[
        Literal["queued", "running", "complete", "error", "cancelled"] | None, Query()
    ] = None,
    model: Annotated[
        str | None,
        Query(
            min_length=3,
            max_length=200,
            pattern=MODEL_PATTERN,
            description="`family/model` as in the job's request (e.g. `demo/default`)",
        ),
    ] = None,
    from_: Annotated[
        str | None,
        Query(
            alias="from",
            min_length=1,
            max_length=40,
            json_schema_extra=INSTANT,
            description="created at or after (ISO 8601; UTC without an offset)",
        ),
    ] = None,
    to: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=40,
            json_schema_extra=INSTANT,
            description="created before (ISO 8601; UTC without an offset)",
        ),
    ] = None,
    after: Annotated[
        str | None,
        Query(min_length=1, max_length=64, description="the `next_after` of the previous page"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    if customer_id is not None and customer_id != principal.customer_id:
        require_admin(request, principal, "only an admin may list another customer's jobs")
    admin_wide = customer_id is None and is_admin(request, principal)
    family, model_name = model.split("/", 1) if model is not None else (None, None)
    where = JobFilter(
        customer_id=None if admin_wide else customer_id or principal.customer_id,
        status=None if status is None else JobStatus(status),
        family=family,
        model=model_name,
        created_from=_instant(from_, "from"),
        created_before=_instant(to, "to"),
    )
    if (
        where.created_from is not None
        and where.created_before is not None
        and where.created_from >= where.created_before
    ):
        raise ApiError(400, "invalid_request", "from must be before to", {"field": "from"})
    cases = services(request).job_cases
    jobs, has_more = await cases.listed(
        where, after=after, limit=limit, newest_first=True, unknown_after=RefusalKind.invalid
    )
    data = [{**await cases.view(job), "customer_id": job.customer_id} for job in jobs]
    return {
        "data": data,
        "has_more": has_more,
        "next_after": jobs[-1].id if has_more else None,
    }


def _instant(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_instant(text, name).timestamp()
    except QueryError as exc:  # a date at the calendar's edge included (parse_instant says so)
        raise ApiError(400, "invalid_request", str(exc), {"field": name}) from exc


@router.get(
    "/jobs/{job_id}/timeline",
    response_model=JobTimeline,
    responses=ERROR_RESPONSES,
    summary="A job's events in order, with when each happened",
)
async def job_timeline(
    job_id: str, request: Request, principal: Annotated[Principal, Depends(caller)]
) -> dict[str, Any]:
    cases = services(request).job_cases
    return await cases.timeline(await cases.owned(job_id, principal))


@router.get(
    "/queue/stats",
    response_model=QueueStats,
    responses=ERROR_RESPONSES,
    summary="The queue's lanes and what runs now (admins)",
)
async def queue_stats(
    request: Request, principal: Annotated[Principal, Depends(caller)]
) -> dict[str, Any]:
    require_admin(request, principal, "only an admin may read the queue's state")
    snapshot = await services(request).job_cases.queue_snapshot()
    return queue_stats_body(snapshot, time.time())


def queue_stats_body(snapshot: QueueSnapshot, now: float) -> dict[str, Any]:
    lanes = [
        {
            "lane": lane,
            "depth": state.depth,
            "oldest_wait_seconds": oldest_wait(state.oldest_created_at, now),
        }
        for lane, state in snapshot.lanes.items()
    ]
    return {
        "lanes": lanes,
        "running": snapshot.running,
        "queued": sum(state.depth for state in snapshot.lanes.values()),
    }


def oldest_wait(created_at: float | None, now: float) -> float | None:
    """How long a lane's head has waited (never negative: replicas' clocks differ a little)."""
    return None if created_at is None else round(max(0.0, now - created_at), 3)

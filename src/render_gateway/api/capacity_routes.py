"""GET /capacity: queueing-theory capacity planning per model, from the hot path (admins)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from render_gateway.api.api_models import ERROR_RESPONSES
from render_gateway.api.deps import caller, require_admin, services
from render_gateway.api.usage_routes import relayed, store_unavailable, usage_read_place
from render_gateway.application.capacity import (
    DEFAULT_TARGET_WAIT_SECONDS,
    DEFAULT_WINDOW_SECONDS,
    MAX_WINDOW_SECONDS,
    MIN_WINDOW_SECONDS,
    capacity_report,
)
from render_gateway.auth.principal import Principal
from render_gateway.metering.queries import TimeRange
from render_gateway.metering.read_side import UsageStoreError

router = APIRouter()


@router.get(
    "/capacity",
    response_model=dict[str, Any],
    responses=ERROR_RESPONSES,
    summary="Capacity planning: utilisation, predicted waits and servers needed per model (admins)",
)
async def get_capacity(
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    window: Annotated[
        float, Query(ge=MIN_WINDOW_SECONDS, le=MAX_WINDOW_SECONDS, description="Seconds back.")
    ] = DEFAULT_WINDOW_SECONDS,
    target_wait: Annotated[
        float, Query(ge=0, le=86_400, description="Target p95 queue wait, seconds.")
    ] = DEFAULT_TARGET_WAIT_SECONDS,
    model: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> dict[str, Any] | Response:
    """Per model over the last ``window`` seconds: arrival rate, service-time moments,
    utilisation, M/M/c and M/G/c waits, servers needed for a p95 queue wait within
    ``target_wait``, and the predicted waits over a range of servers; each figure with its
    formula, and warnings where the data contradict the models' assumptions."""
    svc = services(request)
    require_admin(request, principal, "capacity planning is for admins")
    place = await usage_read_place(svc)
    if not place.here and (answer := await relayed(svc, place, request, "/capacity")):
        return answer
    end = datetime.now(UTC)
    time_range = TimeRange(end - timedelta(seconds=window), end)
    try:
        traffic = await svc.usage_queries.capacity_traffic(time_range, model)
    except UsageStoreError as exc:
        raise store_unavailable(exc) from exc
    depth = await svc.stores.jobs.depth()
    return capacity_report(traffic, svc.pool, time_range, target_wait, depth, model)

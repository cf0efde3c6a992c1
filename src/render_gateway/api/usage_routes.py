"""GET /usage: the caller's own usage and cost (admins: any customer's), with budget state."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from render_gateway.api.api_models import (
    ERROR_RESPONSES,
    GROUP_BY_PATTERN,
    INSTANT,
    UsageResponse,
)
from render_gateway.api.deps import caller, require_admin, services
from render_gateway.api.http import ApiError
from render_gateway.api.usage_relay import relay_usage_read, usage_unavailable
from render_gateway.application.services import GatewayServices
from render_gateway.application.usage_holder import HERE, UsageReadPlace
from render_gateway.auth.principal import Principal
from render_gateway.core.months import month_of
from render_gateway.core.usage_records import NANOS
from render_gateway.metering.queries import QueryError, TimeRange, parse_group_by
from render_gateway.metering.read_side import UsageStoreError

log = logging.getLogger(__name__)
router = APIRouter()


async def usage_read_place(svc: GatewayServices) -> UsageReadPlace:
    """Here, or the replica holding the embedded usage store (application/usage_holder.py)."""
    return HERE if svc.usage_reads is None else await svc.usage_reads.locate()


async def relayed(
    svc: GatewayServices, place: UsageReadPlace, request: Request, path: str
) -> Response | None:
    """The holder's answer; None when it cannot be asked and this process is to read the
    store itself instead (``here_if_unanswered``)."""
    try:
        return await relay_usage_read(svc.session, place.holder_url, request, path)
    except ApiError:
        if place.here_if_unanswered:
            return None
        raise


def store_unavailable(exc: UsageStoreError) -> ApiError:
    # The store's own words may name a path or a host: they are for the log, not the customer.
    log.warning("usage store unavailable for a read: %s", exc)
    return usage_unavailable("the usage store is unavailable; retry shortly")


@router.get(
    "/usage",
    response_model=UsageResponse,
    responses=ERROR_RESPONSES,
    summary="Usage and cost by model and day",
)
async def get_usage(
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    from_: Annotated[
        str | None, Query(alias="from", min_length=1, max_length=40, json_schema_extra=INSTANT)
    ] = None,
    to: Annotated[str | None, Query(min_length=1, max_length=40, json_schema_extra=INSTANT)] = None,
    group_by: Annotated[
        # The pattern is for the document; parse_group_by checks it, naming an unknown grouping.
        str | None, Query(max_length=40, json_schema_extra={"pattern": GROUP_BY_PATTERN})
    ] = None,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
) -> dict[str, Any] | Response:
    svc = services(request)
    customer = customer_id or principal.customer_id
    if customer != principal.customer_id:
        require_admin(request, principal, "only an admin may read another customer's usage")
    try:
        time_range = TimeRange.parse(from_, to, datetime.now(UTC))
        grouping = parse_group_by(group_by)
    except QueryError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc
    place = await usage_read_place(svc)
    # Another replica owns the embedded store: its answer, budget and all.
    if not place.here and (answer := await relayed(svc, place, request, "/usage")):
        return answer
    try:
        # The read side's own client: a slow report never holds up the writer's inserts.
        report = await svc.usage_queries.report(customer, time_range, grouping, svc.config.currency)
    except UsageStoreError as exc:
        raise store_unavailable(exc) from exc
    month = month_of(time.time())
    budget = await svc.meter.state(customer, principal.plan, month)
    report["budget"] = {
        "month": month,
        "limit_gpu_seconds": budget.limit.gpu_seconds,
        "limit_cost": None if budget.limit.cost_nanos is None else budget.limit.cost_nanos / NANOS,
        "spent_gpu_seconds": round(budget.spent.gpu_seconds, 6),
        "spent_cost": budget.spent.cost_nanos / NANOS,
        "reserved_gpu_seconds": round(budget.reserved.gpu_seconds, 6),
    }
    # Finished but not yet in the hot path, as the usage stream's clickhouse group sees it.
    pending, lag_seconds = await asyncio.to_thread(svc.usage_lag)
    report["pending_records"] = pending
    report["lag_seconds"] = round(lag_seconds, 3)
    return report


@router.get(
    "/usage/dashboard",
    response_model=dict[str, Any],
    responses=ERROR_RESPONSES,
    summary="Operators' view: per-minute series, latency quantiles, device hours (admins)",
)
async def get_dashboard(
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    from_: Annotated[
        str | None, Query(alias="from", min_length=1, max_length=40, json_schema_extra=INSTANT)
    ] = None,
    to: Annotated[str | None, Query(min_length=1, max_length=40, json_schema_extra=INSTANT)] = None,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    model: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> dict[str, Any] | Response:
    """From the rollups: requests, errors, GPU-seconds and latency per minute; p50/p90/p95/p99
    latency per model (t-digests); GPU-seconds, requests, customers and utilisation per device
    and hour. Defaults to the last 24 hours."""
    svc = services(request)
    require_admin(request, principal, "the dashboard is for admins")
    try:
        time_range = TimeRange.parse(from_, to, datetime.now(UTC), default_days=1)
    except QueryError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc
    place = await usage_read_place(svc)
    if not place.here and (answer := await relayed(svc, place, request, "/usage/dashboard")):
        return answer
    try:
        body = await svc.usage_queries.dashboard(time_range, customer_id, model)
    except UsageStoreError as exc:
        raise store_unavailable(exc) from exc
    return {"from": time_range.start.isoformat(), "to": time_range.end.isoformat(), **body}

"""GET /usage: the caller's own usage and cost (admins: any customer's), with budget state."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from render_gateway.auth.principal import Principal
from render_gateway.gateway.api_models import ERROR_RESPONSES, UsageResponse
from render_gateway.gateway.deps import caller, services
from render_gateway.gateway.http import ApiError
from render_gateway.metering.budgets import month_of
from render_gateway.metering.queries import QueryError, TimeRange, parse_group_by
from render_gateway.metering.records import NANOS
from render_gateway.metering.report import usage_report
from render_gateway.metering.store import UsageStoreError

router = APIRouter()


@router.get(
    "/usage",
    response_model=UsageResponse,
    responses=ERROR_RESPONSES,
    summary="Usage and cost by model and day",
)
async def get_usage(
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    from_: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    to: Annotated[str | None, Query(max_length=40)] = None,
    group_by: Annotated[str | None, Query(max_length=40)] = None,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
) -> dict[str, Any]:
    svc = services(request)
    plan = svc.config.plans.get(principal.plan)
    customer = customer_id or principal.customer_id
    if customer != principal.customer_id and not (plan is not None and plan.admin):
        raise ApiError(403, "forbidden", "only an admin may read another customer's usage")
    try:
        time_range = TimeRange.parse(from_, to, datetime.now(UTC))
        grouping = parse_group_by(group_by)
    except QueryError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc
    store = svc.usage_writer.store
    if store is None:
        raise ApiError(503, "usage_unavailable", "the usage store is not reachable yet")
    try:
        report = await asyncio.to_thread(
            usage_report, store, customer, time_range, grouping, svc.config.currency
        )
    except UsageStoreError as exc:
        raise ApiError(503, "usage_unavailable", str(exc), headers={"Retry-After": "5"}) from exc
    month = month_of(time.time())
    budget = svc.meter.ledger.state(customer, principal.plan, month)
    report["budget"] = {
        "month": month,
        "limit_gpu_seconds": budget.limit.gpu_seconds,
        "limit_cost": None if budget.limit.cost_nanos is None else budget.limit.cost_nanos / NANOS,
        "spent_gpu_seconds": round(budget.spent.gpu_seconds, 6),
        "spent_cost": budget.spent.cost_nanos / NANOS,
        "reserved_gpu_seconds": round(budget.reserved.gpu_seconds, 6),
    }
    stats = await asyncio.to_thread(svc.usage_writer.refresh_stats)
    report["pending_records"] = stats.backlog  # finished but not yet in the hot path
    report["lag_seconds"] = round(stats.lag_seconds, 3)
    return report

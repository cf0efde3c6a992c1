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
    FromInstant,
    ToInstant,
    UsageResponse,
)
from render_gateway.api.deps import caller, is_admin, require_admin, services
from render_gateway.api.http import ApiError
from render_gateway.api.usage_relay import relay_usage_read, usage_unavailable
from render_gateway.application.services import GatewayServices
from render_gateway.application.usage_holder import HERE, UsageReadPlace
from render_gateway.auth.principal import Principal
from render_gateway.core.months import month_of
from render_gateway.core.usage_records import NANOS
from render_gateway.metering.queries import QueryError, TimeRange, parse_group_by
from render_gateway.metering.read_side import UsageStoreError
from render_gateway.metering.record_lookup import StoredRecord
from render_gateway.metering.series import (
    BUCKET_SECONDS,
    SERIES_GROUPINGS,
    SeriesPoint,
    parse_bucket,
    parse_series_group_by,
)

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
    from_: FromInstant = None,
    to: ToInstant = None,
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
    from_: FromInstant = None,
    to: ToInstant = None,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    model: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> dict[str, Any] | Response:
    """From the rollups: requests, errors, GPU-seconds and latency per minute; p50/p90/p95/p99
    latency per model (t-digests); GPU-seconds, requests, customers and utilisation per device
    and hour. And failed requests per error code and model (``errors_by_code``, from the raw
    table: no rollup keeps the code). Defaults to the last 24 hours."""
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


def record_json(record: StoredRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "job_id": record.job_id,
        "timestamp": record.timestamp.isoformat(),
        "customer_id": record.customer_id,
        "model_name": record.model_name,
        "status": record.status,
        "error_code": record.error_code,
        "gpu_seconds": record.gpu_seconds,
        "queue_time_ms": record.queue_time_us / 1000,
        "inference_time_ms": record.inference_time_us / 1000,
        "total_time_ms": record.total_time_us / 1000,
        "cost": record.cost_nanos / NANOS,
        "cost_nanos": record.cost_nanos,
        "currency": record.currency,
        "backend": record.backend,
        "device_uuid": record.device_uuid,
        "metered": record.metered,
        "billable": record.billable,
    }


@router.get(
    "/usage/records",
    response_model=dict[str, Any],
    responses=ERROR_RESPONSES,
    summary="The usage records of one request or one job",
)
async def get_records(
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    job_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    request_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
) -> dict[str, Any] | Response:
    """As the hot path holds them, oldest first (a retried job has one per run that ended).
    Give exactly one of ``job_id`` and ``request_id``. A customer sees only their own records:
    another customer's request or job answers an empty list, as an unknown one does. Admins
    see anyone's."""
    svc = services(request)
    if (job_id is None) == (request_id is None):
        raise ApiError(400, "invalid_request", "give exactly one of job_id and request_id")
    # Whose records may be read is judged here, before any relay (the holder judges again).
    customer = None if is_admin(request, principal) else principal.customer_id
    place = await usage_read_place(svc)
    if not place.here and (answer := await relayed(svc, place, request, "/usage/records")):
        return answer
    try:
        records = await svc.usage_queries.records(
            request_id=request_id, job_id=job_id, customer_id=customer
        )
    except UsageStoreError as exc:
        raise store_unavailable(exc) from exc
    return {"records": [record_json(r) for r in records]}


def point_json(point: SeriesPoint) -> dict[str, Any]:
    return {
        "t": point.t.isoformat(),
        "requests": point.requests,
        "errors": point.errors,
        "timeouts": point.timeouts,
        "gpu_seconds": round(point.gpu_seconds, 6),
        "cost": point.cost_nanos / NANOS,
        "cost_nanos": point.cost_nanos,
        "all_gpu_seconds": round(point.all_gpu_seconds, 6),
    }


@router.get(
    "/usage/series",
    response_model=dict[str, Any],
    responses=ERROR_RESPONSES,
    summary="Requests, errors, GPU-seconds and cost per bucket, for charts (admins)",
)
async def get_series(
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    from_: FromInstant = None,
    to: ToInstant = None,
    bucket: Annotated[
        # The enum is for the document; parse_bucket checks it, naming what is allowed.
        str | None, Query(max_length=40, json_schema_extra={"enum": list(BUCKET_SECONDS)})
    ] = None,
    group_by: Annotated[
        str | None, Query(max_length=40, json_schema_extra={"enum": list(SERIES_GROUPINGS)})
    ] = None,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    model: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> dict[str, Any] | Response:
    """From the per-minute rollup GET /usage reads, so a series sums to the range's usage.
    Defaults: the last 24 hours; ``bucket`` minute for ranges up to 6 hours, hour up to 7 days,
    else day (at most a week of minutes' worth of buckets); ``group_by`` none (one series,
    ``all``). ``t`` is a bucket's start (UTC); buckets without a request are left out."""
    svc = services(request)
    require_admin(request, principal, "usage series are for admins")
    try:
        time_range = TimeRange.parse(from_, to, datetime.now(UTC), default_days=1)
        chosen = parse_bucket(bucket, time_range)
        grouping = parse_series_group_by(group_by)
    except QueryError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc
    place = await usage_read_place(svc)
    if not place.here and (answer := await relayed(svc, place, request, "/usage/series")):
        return answer
    try:
        series = await svc.usage_queries.series(time_range, chosen, grouping, customer_id, model)
    except UsageStoreError as exc:
        raise store_unavailable(exc) from exc
    return {
        "from": time_range.start.isoformat(),
        "to": time_range.end.isoformat(),
        "bucket": chosen,
        "group_by": grouping,
        "series": [
            {"key": key, "points": [point_json(p) for p in points]}
            for key, points in series.items()
        ],
    }

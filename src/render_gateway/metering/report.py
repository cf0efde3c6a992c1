"""A customer's usage as the API and the CLI show it: requests, GPU-seconds and cost by model
and by day, from the hot path's per-minute rollup."""

from __future__ import annotations

from typing import Any

from render_gateway.core.usage_records import NANOS
from render_gateway.metering.queries import TimeRange, UsageRow, usage_breakdown, usage_totals
from render_gateway.metering.store import UsageStore


def _iso(moment: Any) -> str:
    return str(moment.isoformat()).replace("+00:00", "Z")


def usage_report(
    store: UsageStore,
    customer_id: str,
    time_range: TimeRange,
    group_by: tuple[str, ...],
    currency: str,
) -> dict[str, Any]:
    """GPU-seconds and cost count billable requests only (see docs/OPERATIONS.md: billing)."""
    totals = usage_totals(store, customer_id, time_range)
    rows = []
    for row in usage_breakdown(store, customer_id, time_range, group_by):
        item: dict[str, Any] = {}
        if "model" in group_by:
            item["model"] = row.model_name
        if "day" in group_by:
            item["day"] = row.day.isoformat() if row.day else None
        item.update(_amounts(row))
        rows.append(item)
    return {
        "customer_id": customer_id,
        "from": _iso(time_range.start),
        "to": _iso(time_range.end),
        "group_by": list(group_by),
        "currency": currency,
        "totals": _amounts(totals),
        "rows": rows,
    }


def _amounts(row: UsageRow) -> dict[str, Any]:
    return {
        "requests": row.requests,
        "billable_requests": row.billable_requests,
        "gpu_seconds": round(row.billed_gpu_seconds, 6),
        "cost": row.cost_nanos / NANOS,
        "cost_nanos": row.cost_nanos,
        "unmetered_requests": row.unmetered_requests,
        "unmetered_gpu_seconds": round(row.unmetered_gpu_seconds, 6),
    }

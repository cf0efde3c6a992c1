"""A customer's usage as the API and the CLI show it: requests, GPU-seconds and cost by model
and by day, from the hot path's per-minute rollup."""

from __future__ import annotations

from typing import Any

from render_gateway.core.usage_records import NANOS
from render_gateway.metering.queries import TimeRange, usage_breakdown, usage_totals
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
        item.update(_amounts(row.requests, row.billable_requests, row.billed_gpu_seconds,
                             row.cost_nanos))  # fmt: skip
        rows.append(item)
    return {
        "customer_id": customer_id,
        "from": _iso(time_range.start),
        "to": _iso(time_range.end),
        "group_by": list(group_by),
        "currency": currency,
        "totals": _amounts(
            totals.requests, totals.billable_requests, totals.billed_gpu_seconds, totals.cost_nanos
        ),
        "rows": rows,
    }


def _amounts(requests: int, billable: int, gpu_seconds: float, cost_nanos: int) -> dict[str, Any]:
    return {
        "requests": requests,
        "billable_requests": billable,
        "gpu_seconds": round(gpu_seconds, 6),
        "cost": cost_nanos / NANOS,
        "cost_nanos": cost_nanos,
    }

"""``render-gateway usage``: usage and cost from the hot path, from its store or over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from render_gateway.cli.common import (
    ConfigOption,
    DataDirOption,
    GatewayUrlOption,
    JsonOption,
    echo_report,
    fail,
    from_store_or_gateway,
    gateway_config,
)
from render_gateway.config import GatewayConfig

if TYPE_CHECKING:
    from render_gateway.cli.gateway_client import UsageReport

# GET /usage reads aggregates: it answers in well under this even over a large window.
USAGE_TIMEOUT_SECONDS = 30.0


def usage(
    customer: Annotated[
        str | None, typer.Option(help="Whose usage (default: every customer; over HTTP: yours).")
    ] = None,
    from_: Annotated[str | None, typer.Option("--from", help="Start (ISO 8601, UTC).")] = None,
    to: Annotated[str | None, typer.Option(help="End, exclusive (ISO 8601, UTC).")] = None,
    group_by: Annotated[str, typer.Option(help="model, day, or both.")] = "model,day",
    json_output: JsonOption = False,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="RENDER_API_KEY", help="Key for asking a running gateway."),
    ] = None,
    url: GatewayUrlOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Usage and cost from the hot path: requests, GPU-seconds and cost by model and day.

    Reads the configured usage store directly; when a running gateway owns the embedded store
    (chDB allows one process), asks that gateway's GET /usage with --api-key instead."""
    from render_gateway.metering.store import UsageStoreError

    gateway = gateway_config(config, data_dir)
    try:
        report = from_store_or_gateway(
            gateway,
            lambda: _usage_from_store(gateway, customer, from_, to, group_by),
            lambda base, key: _usage_over_http(base, key, customer, from_, to, group_by),
            url, api_key,
        )  # fmt: skip
    except UsageStoreError as exc:
        fail(str(exc), 1)
    echo_report(report, json_output, _print_usage)


def _usage_from_store(
    gateway: GatewayConfig,
    customer: str | None,
    from_: str | None,
    to: str | None,
    group_by: str,
) -> dict[str, Any]:
    from render_gateway.core.usage_records import NANOS
    from render_gateway.metering.queries import (
        QueryError,
        TimeRange,
        customer_model_totals,
        parse_group_by,
    )
    from render_gateway.metering.report import usage_report
    from render_gateway.metering.store import default_usage_url, open_usage_store

    try:
        time_range = TimeRange.parse(from_, to, datetime.now(UTC))
        grouping = parse_group_by(group_by)
    except QueryError as exc:
        fail(str(exc), 2)
    metering = gateway.metering
    store = open_usage_store(
        metering.url or default_usage_url(Path(gateway.data_dir)),
        retention_days=metering.retention_days,
    )
    try:
        if customer is not None:
            return usage_report(store, customer, time_range, grouping, gateway.currency)
        rows = [
            {"customer_id": t.customer_id, "model": t.model_name, "requests": t.requests,
             "billable_requests": t.billable_requests,
             "gpu_seconds": round(t.billed_gpu_seconds, 6), "cost": t.cost_nanos / NANOS,
             "cost_nanos": t.cost_nanos}
            for t in customer_model_totals(store, time_range)
        ]  # fmt: skip
        return {"customer_id": None, "from": time_range.start.isoformat(),
                "to": time_range.end.isoformat(), "group_by": ["customer", "model"],
                "currency": gateway.currency, "rows": rows}  # fmt: skip
    finally:
        store.close()


def _usage_over_http(
    base: str, api_key: str, customer: str | None, from_: str | None, to: str | None,
    group_by: str,
) -> UsageReport:  # fmt: skip
    from render_gateway.cli.gateway_client import GatewayClient, GatewayError

    try:
        with GatewayClient(base, api_key, USAGE_TIMEOUT_SECONDS) as client:
            return client.usage(customer, from_, to, group_by)
    except GatewayError as exc:
        fail(str(exc), 1)


def _print_usage(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = report["rows"]
    columns = [c for c in ("customer_id", "model", "day") if rows and c in rows[0]]
    currency = report["currency"]
    who = report["customer_id"] or "every customer"
    table = Table(*columns, "requests", "billable", "GPU-seconds", f"cost ({currency})",
                  title=f"usage of {who}, {report['from']} to {report['to']}")  # fmt: skip
    for row in rows:
        table.add_row(
            *(str(row[c]) for c in columns), str(row["requests"]), str(row["billable_requests"]),
            f"{row['gpu_seconds']:.6f}", f"{row['cost']:.9f}",
        )  # fmt: skip
    if totals := report.get("totals"):
        table.add_row(
            *(["total"] + [""] * (len(columns) - 1) if columns else []),
            str(totals["requests"]), str(totals["billable_requests"]),
            f"{totals['gpu_seconds']:.6f}", f"{totals['cost']:.9f}", style="bold",
        )  # fmt: skip
    Console().print(table)

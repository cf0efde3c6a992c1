"""``render-gateway reconcile``: the hot path against the cold path over one window."""

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
    audit_objects,
    echo_report,
    fail,
    from_store_or_gateway,
    gateway_config,
)
from render_gateway.config import GatewayConfig

if TYPE_CHECKING:
    from render_gateway.cli.gateway_client import ReconciliationReport
    from render_gateway.metering.queries import TimeRange

# A run reads every CAS batch in the window (and may repair): minutes, not seconds.
RECONCILE_TIMEOUT_SECONDS = 600.0


def reconcile(
    from_: Annotated[str | None, typer.Option("--from", help="Start (ISO 8601, UTC).")] = None,
    to: Annotated[str | None, typer.Option(help="End, exclusive (ISO 8601, UTC).")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Relative delta allowed per (customer, model).")
    ] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Re-insert into ClickHouse what only CAS has.")
    ] = False,
    json_output: JsonOption = False,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="RENDER_API_KEY", help="Admin key for asking a running gateway."),
    ] = None,
    url: GatewayUrlOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Hot path against cold path over a window; exit 0 when reconciled, 1 on discrepancies
    (listed), 2 when either side cannot be read."""
    from render_gateway.metering.queries import QueryError, TimeRange
    from render_gateway.metering.store import UsageStoreError

    gateway = gateway_config(config, data_dir)
    try:  # one window, whichever way the run goes
        window = TimeRange.parse(from_, to, datetime.now(UTC))
    except QueryError as exc:
        fail(str(exc), 2)
    limit = gateway.reconcile.threshold if threshold is None else threshold
    try:
        report = from_store_or_gateway(
            gateway,
            lambda: _reconcile_here(gateway, window, limit, repair),
            lambda base, key: _reconcile_over_http(base, key, window, limit, repair),
            url, api_key,
        )  # fmt: skip
    except UsageStoreError as exc:
        report = {"status": "error", "error": f"the hot path (ClickHouse) is unreachable: {exc}"}
    echo_report(report, json_output, _print_reconciliation)
    raise typer.Exit({"reconciled": 0, "discrepancies": 1}.get(report["status"], 2))


def _reconcile_here(
    gateway: GatewayConfig, window: TimeRange, threshold: float, repair: bool
) -> dict[str, Any]:
    from render_gateway.audit.keys import load_signer
    from render_gateway.audit.reconcile import reconcile as run_reconcile
    from render_gateway.audit.reconcile_runs import record_run
    from render_gateway.metering.store import default_usage_url, open_usage_store

    metering = gateway.metering
    store = open_usage_store(
        metering.url or default_usage_url(Path(gateway.data_dir)),
        retention_days=metering.retention_days,
    )
    try:
        objects = audit_objects(gateway, None)
        started = datetime.now(UTC)
        result = run_reconcile(store, objects, window, threshold, repair=repair)
        signer = load_signer(Path(gateway.data_dir), gateway.audit.origin)
        record_run(result, started, store, objects, signer)
        return result.to_json()
    finally:
        store.close()


def _reconcile_over_http(
    base: str, api_key: str, window: TimeRange, threshold: float, repair: bool
) -> ReconciliationReport:
    """The run by the gateway that owns the usage store; a failed call is an ``error`` report
    (exit 2), as when this process cannot read a side itself."""
    from render_gateway.cli.gateway_client import GatewayClient, GatewayError

    try:
        with GatewayClient(base, api_key, RECONCILE_TIMEOUT_SECONDS) as client:
            return client.reconcile(
                window.start.isoformat(), window.end.isoformat(), threshold, repair
            )
    except GatewayError as exc:
        return {"status": "error", "error": str(exc)}


def _print_reconciliation(report: dict[str, Any]) -> None:
    status = report["status"]
    if status == "error":
        typer.echo(f"ERROR: {report.get('error')}")
        return
    typer.echo(
        f"{status}: {report['window_start']} to {report['window_end']}: hot "
        f"{report['hot_requests']} requests / {report['hot_gpu_seconds']:.6f} GPU-s, cold "
        f"{report['cold_requests']} / {report['cold_gpu_seconds']:.6f}"
    )
    for key in report["keys"]:
        typer.echo(
            f"  {key['customer_id']} {key['model']}: requests {key['hot_requests']} vs "
            f"{key['cold_requests']}, GPU-s {key['hot_gpu_seconds']:.6f} vs "
            f"{key['cold_gpu_seconds']:.6f} ({key['relative_gpu_seconds']:.4%})"
        )
    for name in ("missing_in_hot", "missing_in_cold", "duplicated_in_hot"):
        if report[name]:
            shown = ", ".join(report[name])
            typer.echo(f"  {name} ({report['counts'][name]}): {shown}")
    for item in report["gpu_mismatches"]:
        typer.echo(
            f"  gpu_mismatch {item['request_id']}: hot {item['hot_gpu_seconds']} vs cold "
            f"{item['cold_gpu_seconds']}"
        )
    for batch in report["unreadable_batches"]:
        typer.echo(f"  unreadable batch: {batch}")
    if report.get("repaired"):
        typer.echo(f"  repaired: {report['repaired']} records re-inserted into ClickHouse")

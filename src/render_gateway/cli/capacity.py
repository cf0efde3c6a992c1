"""``render-gateway capacity``: queueing-theory capacity planning per model, from the hot path
(its store, or a running gateway's GET /capacity when that gateway owns the embedded store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

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

CAPACITY_TIMEOUT_SECONDS = 30.0
# The by-servers rows the table shows (the JSON has them all).
SHOWN_POINTS = 12


def capacity(
    window: Annotated[float, typer.Option(help="Seconds back from now (60 to 30 days).")] = 3600,
    target_wait: Annotated[float, typer.Option(help="Target p95 queue wait in seconds.")] = 1.0,
    model: Annotated[
        str | None, typer.Option(help="One model (modality/family/model), e.g. image/sd/tiny.")
    ] = None,
    json_output: JsonOption = False,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="RENDER_API_KEY", help="Admin key for asking a running gateway."),
    ] = None,
    url: GatewayUrlOption = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Capacity planning: utilisation, predicted queue waits (M/M/c, M/G/c) and the GPU slots
    needed per model for a p95 queue wait within --target-wait, each figure with its formula.

    Reads the configured usage store directly (the queue depth is then unknown); when a
    running gateway owns the embedded store, asks its GET /capacity with --api-key instead."""
    from render_gateway.application.capacity import MAX_WINDOW_SECONDS, MIN_WINDOW_SECONDS
    from render_gateway.metering.store import UsageStoreError

    if not MIN_WINDOW_SECONDS <= window <= MAX_WINDOW_SECONDS:
        fail(f"--window must be {MIN_WINDOW_SECONDS} to {MAX_WINDOW_SECONDS} seconds", 2)
    if not 0 <= target_wait <= 86_400:
        fail("--target-wait must be 0 to 86400 seconds", 2)
    gateway = gateway_config(config, data_dir)
    try:
        report = from_store_or_gateway(
            gateway,
            lambda: _from_store(gateway, window, target_wait, model),
            lambda base, key: _over_http(base, key, window, target_wait, model),
            url, api_key,
        )  # fmt: skip
    except UsageStoreError as exc:
        fail(str(exc), 1)
    echo_report(report, json_output, _print)


def _from_store(
    gateway: GatewayConfig, window: float, target_wait: float, model: str | None
) -> dict[str, Any]:
    from pathlib import Path

    from render_gateway.application.capacity import capacity_report, configured_pool
    from render_gateway.metering.capacity_queries import model_traffic
    from render_gateway.metering.queries import TimeRange
    from render_gateway.metering.store import default_usage_url, open_usage_store

    metering = gateway.metering
    store = open_usage_store(
        metering.url or default_usage_url(Path(gateway.data_dir)),
        retention_days=metering.retention_days,
    )
    end = datetime.now(UTC)
    time_range = TimeRange(end - timedelta(seconds=window), end)
    try:
        traffic = model_traffic(store, time_range, model)
    finally:
        store.close()
    return capacity_report(traffic, configured_pool(gateway), time_range, target_wait, None, model)


def _over_http(
    base: str, api_key: str, window: float, target_wait: float, model: str | None
) -> dict[str, Any]:
    from render_gateway.cli.gateway_client import GatewayClient, GatewayError

    try:
        with GatewayClient(base, api_key, CAPACITY_TIMEOUT_SECONDS) as client:
            return client.capacity(window, target_wait, model)
    except GatewayError as exc:
        fail(str(exc), 1)


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"capacity over {report['window_seconds']:g} s ({report['from']} to {report['to']}),"
        f" target p95 queue wait {report['target_p95_wait_s']:g} s;"
        f" service time = {report['service_time']}"
    )
    if report.get("queue_depth") is not None:
        console.print(f"queued now: {report['queue_depth']}")
    if not report["models"]:
        console.print("no requests in the window")
    for plan in report["models"]:
        title = (
            f"{plan['model']}: {plan['requests']} requests, c = {plan['servers']} servers,"
            f" planned with {plan['planning_model'] or '—'}"
        )
        table = Table("figure", "value", "unit", "formula", title=title)
        for name, figure in plan["figures"].items():
            table.add_row(name, _number(figure["value"]), figure["unit"], figure["formula"])
        console.print(table)
        if plan["by_servers"]:
            series = Table("servers", "utilisation", "mean wait (s)", "p95 wait (s)",
                           title=f"{plan['model']}: predicted queue wait by servers")  # fmt: skip
            for point in plan["by_servers"][:SHOWN_POINTS]:
                series.add_row(
                    str(point["servers"]), f"{point['utilisation']:.3f}",
                    _number(point["mean_wait_s"]), _number(point["p95_wait_s"]),
                )  # fmt: skip
            console.print(series)
        for warning in plan["warnings"]:
            console.print(f"warning: {warning}", markup=False)

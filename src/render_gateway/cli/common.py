"""What the commands share: the config options, loading the config, and failing with a message."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from render_gateway.config import ConfigError, GatewayConfig, Settings, load_settings

if TYPE_CHECKING:
    from render_gateway.stores.objects import ObjectStore

ConfigOption = Annotated[Path | None, typer.Option(help="TOML config file.")]
DataDirOption = Annotated[Path | None, typer.Option(help="Data directory.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
GatewayUrlOption = Annotated[str | None, typer.Option(help="The running gateway's base URL.")]


def fail(message: str, code: int) -> NoReturn:
    """Every command's error: one ``error:`` line on stderr, then the exit code."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def offline() -> None:
    # Nothing is ever downloaded: set before diffusers/transformers/huggingface_hub import.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        fail(str(exc), 2)


def gateway_config(config: Path | None, data_dir: Path | None) -> GatewayConfig:
    gateway = settings(config).gateway
    return gateway if data_dir is None else gateway.model_copy(update={"data_dir": data_dir})


def gateway_url(gateway: GatewayConfig, url: str | None) -> str:
    """The running gateway to ask: --url, else the address the config binds."""
    return url or f"http://{gateway.host}:{gateway.port}"


def key_for_running_gateway(locked: Exception, api_key: str | None) -> str:
    """The key to ask the gateway that owns the embedded store with; exit 2 without one."""
    if not api_key:
        fail(
            f"{locked}\nA running gateway owns the usage store: pass --api-key "
            "(or set RENDER_API_KEY) to ask it over HTTP.",
            2,
        )
    return api_key


def from_store_or_gateway(
    gateway: GatewayConfig,
    here: Callable[[], dict[str, Any]],
    over_http: Callable[[str, str], dict[str, Any]],
    url: str | None,
    api_key: str | None,
) -> dict[str, Any]:
    """``here()`` on the configured usage store; when a running gateway owns the embedded
    store (chDB allows one process), ``over_http(its URL, key)`` instead. Any other
    UsageStoreError is the caller's to report."""
    from render_gateway.metering.store import UsageStoreLocked

    try:
        return here()
    except UsageStoreLocked as exc:
        return over_http(gateway_url(gateway, url), key_for_running_gateway(exc, api_key))


def echo_report(report: dict[str, Any], json_output: bool, table: Callable[[Any], None]) -> None:
    """A command's answer: indented JSON with --json, else its table."""
    if json_output:
        import orjson

        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        table(report)


def audit_objects(gateway: GatewayConfig, cas: str | None, create: bool = True) -> ObjectStore:
    """The audit store; readers pass ``create=False`` (a missing directory is an error)."""
    from render_gateway.stores.objects import default_cas_url, open_object_store

    try:
        return open_object_store(
            cas or gateway.audit.cas_url or default_cas_url(Path(gateway.data_dir)),
            create=create,
        )
    except ValueError as exc:
        fail(str(exc), 2)


def when(moment: float | None) -> str:
    return (
        "" if moment is None else datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    )

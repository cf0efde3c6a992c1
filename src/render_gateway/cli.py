"""The one entry point: ``render-gateway``."""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from render_gateway.config import ConfigError, GatewayConfig, ModelConfig, Settings, load_settings

if TYPE_CHECKING:
    from render_gateway.auth.api_keys import ApiKey, SqliteApiKeyStore

app = typer.Typer(help="Render: inference gateway for generative media.", no_args_is_help=True)
models_app = typer.Typer(help="Model directories for the reference worker.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (stored as hashes; shown once).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")


class DemoKind(StrEnum):
    image = "image"
    video = "video"


def _offline() -> None:
    # Nothing is ever downloaded: set before diffusers/transformers/huggingface_hub import.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _parse_model(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise typer.BadParameter(f"--model wants NAME=PATH, got {spec!r}")
    return name, Path(path)


@app.command()
def worker(
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (0: any free port).")] = None,
    model: Annotated[
        list[str] | None, typer.Option(help="NAME=PATH of a saved pipeline; repeatable.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda[:N].")] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(help="Runs at once per --model model.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the node key lives.")] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the reference KServe v2 backend on diffusers pipelines."""
    _offline()
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    cfg = settings.worker
    updates: dict[str, object] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    if device is not None:
        updates["device"] = device
    if data_dir is not None:
        updates["data_dir"] = data_dir
    models = dict(cfg.models)
    for spec in model or []:
        name, path = _parse_model(spec)
        models[name] = ModelConfig(path=path, max_concurrency=max_concurrency or 1)
    if not models:
        typer.echo(
            "error: no models: pass --model NAME=PATH or set [worker.models] in the config",
            err=True,
        )
        raise typer.Exit(2)
    updates["models"] = models
    cfg = cfg.model_copy(update=updates)

    import uvicorn

    from render_gateway.worker.app import create_app

    uvicorn.run(
        create_app(cfg),
        host=cfg.host,
        port=cfg.port,
        log_level=log_level,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=5,
    )


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _gateway_config(config: Path | None, data_dir: Path | None) -> GatewayConfig:
    gateway = _settings(config).gateway
    return gateway if data_dir is None else gateway.model_copy(update={"data_dir": data_dir})


def _key_store(gateway: GatewayConfig) -> SqliteApiKeyStore:
    from render_gateway.auth.api_keys import SqliteApiKeyStore

    return SqliteApiKeyStore(Path(gateway.data_dir) / "keys.db")


async def _first_admin_key(gateway: GatewayConfig) -> str | None:
    store = _key_store(gateway)
    try:
        if await store.list():
            return None
        _, secret = await store.create("admin", "admin")
        return secret
    finally:
        await store.close()


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where every embedded store lives.")] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Start the gateway (with no backend configured, also a local demo worker)."""
    import asyncio

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    gateway = _gateway_config(config, data_dir)
    updates: dict[str, object] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    gateway = gateway.model_copy(update=updates)
    secret = asyncio.run(_first_admin_key(gateway))
    if secret is not None:
        typer.echo("Created the first API key (customer 'admin', plan 'admin'). It is shown once:")
        typer.echo(secret)

    import uvicorn

    from render_gateway.gateway.app import create_app

    uvicorn.run(create_app(gateway), host=gateway.host, port=gateway.port, log_level=log_level,
                loop="uvloop", http="httptools", timeout_graceful_shutdown=5)  # fmt: skip


@keys_app.command("create")
def keys_create(
    customer: Annotated[str, typer.Option(help="The customer the key bills.")],
    plan: Annotated[str, typer.Option(help="The customer's plan.")] = "default",
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """Create a key; the secret is printed alone on the last line, once."""
    import asyncio

    gateway = _gateway_config(config, data_dir)
    if plan not in gateway.plans:
        typer.echo(
            f"error: unknown plan {plan!r}; configured: {', '.join(sorted(gateway.plans))}",
            err=True,
        )
        raise typer.Exit(2)

    async def create() -> tuple[str, str]:
        store = _key_store(gateway)
        try:
            key, secret = await store.create(customer, plan)
            return key.key_id, secret
        finally:
            await store.close()

    key_id, secret = asyncio.run(create())
    typer.echo(f"key {key_id} for customer {customer!r}, plan {plan!r}:")
    typer.echo(secret)


@keys_app.command("list")
def keys_list(
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """List keys (ids, customers, plans; never secrets)."""
    import asyncio

    from rich.console import Console
    from rich.table import Table

    gateway = _gateway_config(config, data_dir)

    async def listing() -> list[ApiKey]:
        store = _key_store(gateway)
        try:
            return await store.list()
        finally:
            await store.close()

    table = Table("key id", "customer", "plan", "created", "revoked")
    for key in asyncio.run(listing()):
        table.add_row(
            key.key_id, key.customer_id, key.plan, _when(key.created_at), _when(key.revoked_at)
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (key_…).")],
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """Revoke a key at once."""
    import asyncio

    gateway = _gateway_config(config, data_dir)

    async def revoke() -> bool:
        store = _key_store(gateway)
        try:
            return await store.revoke(key_id)
        finally:
            await store.close()

    if not asyncio.run(revoke()):
        typer.echo(f"error: no active key {key_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


def _when(moment: float | None) -> str:
    from datetime import UTC, datetime

    return (
        "" if moment is None else datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    )


@models_app.command("make-demo")
def make_demo(
    directory: Annotated[Path, typer.Argument(help="Where to write the pipeline.")],
    kind: Annotated[
        DemoKind, typer.Option(help="image: t2i, i2i, edit; video: t2v.")
    ] = DemoKind.image,
) -> None:
    """Write a tiny, randomly initialised diffusion pipeline (no download)."""
    _offline()
    from render_gateway.worker.demo import make_demo_pipeline

    if directory.exists() and any(directory.iterdir()):
        typer.echo(f"error: {directory} exists and is not empty", err=True)
        raise typer.Exit(2)
    make_demo_pipeline(directory, kind.value)
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    typer.echo(
        f"wrote a tiny demo pipeline to {directory} ({size / 1e6:.1f} MB; "
        "random weights, so its output looks like noise)"
    )


def main() -> None:
    app()

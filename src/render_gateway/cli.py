"""The one entry point: ``render-gateway``."""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from render_gateway.config import ConfigError, ModelConfig, load_settings

app = typer.Typer(help="Render: inference gateway for generative media.", no_args_is_help=True)
models_app = typer.Typer(help="Model directories for the reference worker.", no_args_is_help=True)
app.add_typer(models_app, name="models")


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

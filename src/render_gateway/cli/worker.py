"""``render-gateway worker``: the reference KServe v2 backend."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from render_gateway.cli.common import ConfigOption, fail, offline, settings
from render_gateway.config import ModelConfig


def parse_model(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise typer.BadParameter(f"--model wants NAME=PATH, got {spec!r}")
    return name, Path(path)


def worker(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (0: any free port).")] = None,
    grpc_port: Annotated[
        int | None,
        typer.Option(help="Also serve KServe v2 over gRPC on this port (0: any free port)."),
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option(help="NAME=PATH of a saved pipeline; repeatable.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda[:N].")] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(help="Runs at once per --model model.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the node key lives.")] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
    parent_pid: Annotated[
        int | None, typer.Option(help="Stop when this process ends (serve's demo worker).")
    ] = None,
) -> None:
    """Run the reference KServe v2 backend on diffusers pipelines."""
    offline()
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if parent_pid is not None:
        from render_gateway.parent_death import exit_when_parent_exits

        exit_when_parent_exits(parent_pid)
    cfg = settings(config).worker
    updates: dict[str, object] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    if grpc_port is not None:
        updates["grpc_port"] = grpc_port
    if device is not None:
        updates["device"] = device
    if data_dir is not None:
        updates["data_dir"] = data_dir
    models = dict(cfg.models)
    for spec in model or []:
        name, path = parse_model(spec)
        models[name] = ModelConfig(path=path, max_concurrency=max_concurrency or 1)
    if not models:
        fail("no models: pass --model NAME=PATH or set [worker.models] in the config", 2)
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

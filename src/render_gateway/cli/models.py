"""``render-gateway models``: model directories for the reference worker."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from render_gateway.cli.common import fail, offline

models_app = typer.Typer(help="Model directories for the reference worker.", no_args_is_help=True)


class DemoKind(StrEnum):
    image = "image"
    video = "video"


@models_app.command("make-demo")
def make_demo(
    directory: Annotated[Path, typer.Argument(help="Where to write the pipeline.")],
    kind: Annotated[
        DemoKind, typer.Option(help="image: t2i, i2i, edit; video: t2v.")
    ] = DemoKind.image,
) -> None:
    """Write a tiny, randomly initialised diffusion pipeline (no download)."""
    offline()
    from render_gateway.worker.demo import make_demo_pipeline

    if directory.exists() and any(directory.iterdir()):
        fail(f"{directory} exists and is not empty", 2)
    make_demo_pipeline(directory, kind.value)
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    typer.echo(
        f"wrote a tiny demo pipeline to {directory} ({size / 1e6:.1f} MB; "
        "random weights, so its output looks like noise)"
    )

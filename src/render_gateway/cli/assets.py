"""``render-gateway assets``: the asset store's files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

assets_app = typer.Typer(help="The asset store's files.", no_args_is_help=True)


@assets_app.command("export-records")
def export_records(
    directory: Annotated[
        Path, typer.Argument(help="a file:// asset store's directory, e.g. .render/assets")
    ],
) -> None:
    """Write each asset record of DIRECTORY's records.sqlite as the records/XY/<id>.json
    object an s3:// asset store reads (create-only), before copying the directory to a bucket."""
    from render_gateway.stores.asset_records import UnreadableRecord, export_json_records

    if not directory.is_dir():
        typer.echo(f"error: {directory} is not a directory", err=True)
        raise typer.Exit(2)
    try:
        written, kept = export_json_records(directory)
    except UnreadableRecord as exc:
        typer.echo(f"error: a record in {directory} is unreadable: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{written} records written, {kept} already there")

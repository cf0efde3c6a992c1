"""The one entry point: ``render-gateway``. One module per command or command group; the
commands import what they run lazily, so that ``--help`` and the small commands start fast."""

from __future__ import annotations

import typer

from render_gateway.cli import capacity, reconcile, serve, usage, worker
from render_gateway.cli.assets import assets_app
from render_gateway.cli.audit import audit_app
from render_gateway.cli.keys import keys_app
from render_gateway.cli.models import models_app

app = typer.Typer(help="Render: inference gateway for generative media.", no_args_is_help=True)
# In the order ``--help`` lists them: the commands, then the groups.
app.command()(worker.worker)
app.command()(serve.serve)
app.command()(usage.usage)
app.command()(reconcile.reconcile)
app.command()(capacity.capacity)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(assets_app, name="assets")


def main() -> None:
    app()


__all__ = ["app", "main"]

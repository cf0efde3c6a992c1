"""``render-gateway serve``: the gateway, with the roles this process runs."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from render_gateway.cli.common import ConfigOption, fail, gateway_config
from render_gateway.cli.keys import first_admin_key
from render_gateway.config import ROLES, GatewayConfig, Role


def parse_roles(text: str) -> list[Role]:
    """``--roles``: a comma list of ROLES names, each once, in the order given."""
    known: dict[str, Role] = {role: role for role in ROLES}
    roles: list[Role] = []
    for name in (part.strip() for part in text.split(",")):
        if name not in known:
            raise ValueError(
                f"--roles: unknown role {name!r}; the roles are {', '.join(ROLES)}"
                if name
                else f"--roles: an empty name in {text!r}; the roles are {', '.join(ROLES)}"
            )
        if known[name] not in roles:
            roles.append(known[name])
    return roles


def serve_config(
    config: Path | None,
    data_dir: Path | None,
    host: str | None = None,
    port: int | None = None,
    roles: list[Role] | None = None,
) -> GatewayConfig:
    """The config file's [gateway] with the flags that were given in place of its settings."""
    gateway = gateway_config(config, data_dir)
    updates: dict[str, object] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    if roles is not None:
        updates["roles"] = roles
    return gateway.model_copy(update=updates)


def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where every embedded store lives.")] = None,
    roles: Annotated[
        str | None,
        typer.Option(
            help=f"What this process runs, a comma list of {', '.join(ROLES)} "
            "(default: the config's roles, all of them unless set)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Start the gateway (with no backend configured, also a local demo worker). One serve per
    data dir: a second refuses, naming the first's pid. SIGTERM drains running jobs."""
    try:  # before the gateway's imports: a mistyped role answers at once
        chosen = None if roles is None else parse_roles(roles)
    except ValueError as exc:
        fail(str(exc), 2)

    from render_gateway.api.serve import StartRefused, listen, run_gateway
    from render_gateway.data_dir_lock import DataDirBusy, lock_data_dir

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    gateway = serve_config(config, data_dir, host, port, chosen)
    try:
        # The lock before anything opens a store (it is held until the process ends), then the
        # port, so that neither a second gateway nor a taken port starts anything.
        lock_data_dir(Path(gateway.data_dir))
        sock = listen(gateway.host, gateway.port)
    except (DataDirBusy, StartRefused, OSError) as exc:
        fail(str(exc), 1)
    try:
        secret = asyncio.run(first_admin_key(gateway))
    except Exception as exc:  # the key store unreachable, a Redis refusing our AUTH: one line
        fail(f"the gateway cannot start: the API key store: {type(exc).__name__}: {exc}", 1)
    if secret is not None:
        typer.echo("Created the first API key (customer 'admin', plan 'admin'). It is shown once:")
        typer.echo(secret)
    try:
        run_gateway(gateway, sock, log_level)
    except StartRefused as exc:
        fail(str(exc), 1)

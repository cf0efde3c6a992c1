"""``render-gateway serve`` as a process: listen, start the services, serve HTTP, drain.

The order is what makes stops and refusals clean. The caller has already taken the data dir's
lock (``data_dir_lock``); the listening socket is bound here before anything heavy starts, so
a taken port refuses at once; the services start before uvicorn does, so a refusal at start is
one line instead of a lifespan traceback; and SIGTERM stops the job runner from claiming work
the moment it arrives, while uvicorn finishes its open requests and the lifespan's end drains
running jobs (``GatewayServices.stop``).
"""

from __future__ import annotations

import logging
import math
import socket
from types import FrameType

import uvicorn
import uvloop

from render_gateway.api.app import create_app
from render_gateway.application.services import GatewayServices
from render_gateway.application.usage_holder import derived_advertise_url
from render_gateway.config import GatewayConfig
from render_gateway.startup_heap import freeze_startup_heap

log = logging.getLogger(__name__)


class StartRefused(Exception):
    """The gateway cannot start; the message is one line for the operator."""


def listen(host: str, port: int) -> socket.socket:
    """The gateway's listening socket, bound now (uvicorn listens on it later)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartRefused(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the services the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, services: GatewayServices) -> None:
        super().__init__(config)
        self._services = services

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._services.begin_stop()
        super().handle_exit(sig, frame)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def with_advertise_url(config: GatewayConfig, sock: socket.socket) -> GatewayConfig:
    """``config`` with the URL other replicas reach this one at: the configured one, else the
    address as bound (the port the socket got, which ``--port 0`` leaves to the system)."""
    if config.advertise_url is not None:
        return config
    port = int(sock.getsockname()[1])
    return config.model_copy(update={"advertise_url": derived_advertise_url(config.host, port)})


async def _serve(config: GatewayConfig, sock: socket.socket, log_level: str) -> None:
    config = with_advertise_url(config, sock)
    try:
        services = await GatewayServices.start(config)
    except Exception as exc:  # a refusal: one line; the traceback only at debug level
        log.debug("the gateway could not start", exc_info=True)
        raise StartRefused(f"the gateway cannot start: {_one_line(exc)}") from exc
    app = create_app(config, services)
    freeze_startup_heap()  # after everything long-lived exists, before the first request
    server = _DrainingServer(
        uvicorn.Config(
            app, log_level=log_level, http="httptools",
            # Sync requests in flight get the same grace as running jobs (cut off, their
            # runs would be cancelled and billed as such on every deploy).
            lifespan="on", timeout_graceful_shutdown=math.ceil(config.drain_seconds),
        ),
        services,
    )  # fmt: skip
    try:
        await server.serve(sockets=[sock])
    finally:
        await services.stop()  # already done by the lifespan's end, unless serve failed first


def run_gateway(config: GatewayConfig, sock: socket.socket, log_level: str) -> None:
    """Serve until stopped; raises ``StartRefused`` when the services cannot start."""
    uvloop.run(_serve(config, sock, log_level))

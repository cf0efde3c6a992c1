"""A gateway in this process: its services on memory stores, one backend, and an httpx client
through the ASGI app (no port, no lifespan: the services are started here)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from render_gateway.api.app import create_app
from render_gateway.application.services import GatewayServices
from render_gateway.config import BackendConfig, CatalogEntryConfig, GatewayConfig, ReconcileConfig

from support.memory_stores import memory_stores


def one_backend_config(data_dir: Path, endpoint: str, **backend: Any) -> GatewayConfig:
    """The api and scheduler roles, anonymous callers on the default plan, ``sd/tiny`` served
    by one backend at ``endpoint`` (its model ``demo``; ``backend``: more of its settings)."""
    return GatewayConfig(
        data_dir=data_dir,
        local_demo_worker=False,
        anonymous_plan="default",
        roles=["api", "scheduler"],
        backends=[
            BackendConfig(
                id="w", endpoint=endpoint, family="sd", models={"tiny": "demo"}, **backend
            )
        ],
        models=[CatalogEntryConfig(modality="image", family="sd", model="tiny", tasks=["t2i"])],
        reconcile=ReconcileConfig(enabled=False),
        stores=memory_stores(),
    )


@contextlib.asynccontextmanager
async def in_process_gateway(
    config: GatewayConfig,
) -> AsyncIterator[tuple[GatewayServices, httpx.AsyncClient]]:
    services = await GatewayServices.start(config)
    try:
        app = create_app(services.config, started=services)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield services, client
    finally:
        await services.stop()

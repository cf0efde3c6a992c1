"""``first_admin_key`` (serve's first start): replicas starting together on one empty key store
make one admin key between them, each through its own handle on the store, as separate
processes would: the embedded SQLite file and a real redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from render_gateway.cli.keys import first_admin_key, key_store
from render_gateway.config import GatewayConfig, StoresConfig

from support.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]


@pytest.fixture(params=["sqlite", "redis"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> GatewayConfig:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        # The module's redis-server is this test's alone: its keys start empty.
        return GatewayConfig(data_dir=tmp_path, stores=StoresConfig(keys=server.url))
    return GatewayConfig(data_dir=tmp_path)  # keys.db in the data dir


async def test_replicas_starting_together_make_one_admin_key(gateway: GatewayConfig) -> None:
    secrets = await asyncio.gather(*(first_admin_key(gateway) for _ in range(8)))
    made = [secret for secret in secrets if secret is not None]
    assert len(made) == 1
    store = key_store(gateway)
    try:
        key = await store.authenticate(made[0])
        assert (key.customer_id, key.plan) == ("admin", "admin")
        assert [listed.key_id for listed in await store.list()] == [key.key_id]
    finally:
        await store.close()
    assert await first_admin_key(gateway) is None  # a later start makes none

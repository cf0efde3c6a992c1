"""``render-gateway keys``: API keys, straight in the data dir's key store."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from render_gateway.cli.common import ConfigOption, DataDirOption, fail, gateway_config, when
from render_gateway.config import GatewayConfig

if TYPE_CHECKING:
    from render_gateway.auth.api_keys import ApiKey
    from render_gateway.stores.keys import ApiKeyStore

keys_app = typer.Typer(help="API keys (stored as hashes; shown once).", no_args_is_help=True)


def key_store(gateway: GatewayConfig) -> ApiKeyStore:
    # The store the gateway opens ([gateway.stores] keys, else the shared Redis, else keys.db in
    # the data dir).
    from render_gateway.application.cluster_agreement import use_shared_password
    from render_gateway.stores.keys import open_key_store
    from render_gateway.stores.urls import store_urls

    use_shared_password(gateway)  # [gateway.shared] password_file, as serve uses it
    return open_key_store(store_urls(gateway)["keys"])


async def first_admin_key(gateway: GatewayConfig) -> str | None:
    """An admin key when the store has none yet (serve's first start), else None. Made in one
    atomic step of the store, so replicas starting together on an empty shared store make (and
    print) one between them."""
    store = key_store(gateway)
    try:
        made = await store.create_first("admin", "admin")
        return None if made is None else made[1]
    finally:
        await store.close()


@keys_app.command("create")
def keys_create(
    customer: Annotated[str, typer.Option(help="The customer the key bills.")],
    plan: Annotated[str, typer.Option(help="The customer's plan.")] = "default",
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create a key; the secret is printed alone on the last line, once."""
    gateway = gateway_config(config, data_dir)
    if plan not in gateway.plans:
        fail(f"unknown plan {plan!r}; configured: {', '.join(sorted(gateway.plans))}", 2)

    async def create() -> tuple[str, str]:
        store = key_store(gateway)
        try:
            key, secret = await store.create(customer, plan)
            return key.key_id, secret
        finally:
            await store.close()

    key_id, secret = asyncio.run(create())
    typer.echo(f"key {key_id} for customer {customer!r}, plan {plan!r}:")
    typer.echo(secret)


@keys_app.command("list")
def keys_list(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """List keys (ids, customers, plans; never secrets)."""
    from rich.console import Console
    from rich.table import Table

    gateway = gateway_config(config, data_dir)

    async def listing() -> list[ApiKey]:
        store = key_store(gateway)
        try:
            return await store.list()
        finally:
            await store.close()

    table = Table("key id", "customer", "plan", "created", "revoked")
    for key in asyncio.run(listing()):
        table.add_row(
            key.key_id, key.customer_id, key.plan, when(key.created_at), when(key.revoked_at)
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (key_…).")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Revoke a key at once."""
    gateway = gateway_config(config, data_dir)

    async def revoke() -> bool:
        store = key_store(gateway)
        try:
            return await store.revoke(key_id)
        finally:
            await store.close()

    if not asyncio.run(revoke()):
        fail(f"no active key {key_id!r}", 1)
    typer.echo(f"revoked {key_id}")

"""Fails when a setting, route or command exists in code but not in the docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel
from starlette.routing import Route
from typer.main import get_command

from render_gateway.cli import app as cli_app
from render_gateway.config import (
    AuditConfig,
    BackendConfig,
    BreakerSettings,
    CatalogEntryConfig,
    CustomerBudgetConfig,
    GatewayConfig,
    JwtConfig,
    MeteringConfig,
    ModelConfig,
    PlanConfig,
    ReconcileConfig,
    RemoteImagesConfig,
    RetryConfig,
    SharedConfig,
    StoresConfig,
    WebhooksConfig,
    WorkerConfig,
)

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = (ROOT / "docs" / "OPERATIONS.md").read_text()
WORKER = (ROOT / "docs" / "WORKER.md").read_text()
API = (ROOT / "docs" / "API.md").read_text()


def _fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


@pytest.mark.parametrize(
    ("section", "name"),
    [
        (section, name)
        for section, model in (
            ("[worker]", WorkerConfig),
            ("[worker.models.NAME]", ModelConfig),
            ("[worker.remote_images]", RemoteImagesConfig),
            ("[gateway]", GatewayConfig),
            ("[gateway.plans.NAME]", PlanConfig),
            ("[[gateway.backends]]", BackendConfig),
            ("[[gateway.models]]", CatalogEntryConfig),
            ("[gateway.jwt]", JwtConfig),
            ("[gateway.retry]", RetryConfig),
            ("[gateway.breaker]", BreakerSettings),
            ("[gateway.budgets.CUSTOMER]", CustomerBudgetConfig),
            ("[gateway.metering]", MeteringConfig),
            ("[gateway.audit]", AuditConfig),
            ("[gateway.reconcile]", ReconcileConfig),
            ("[gateway.webhooks]", WebhooksConfig),
            ("[gateway.stores]", StoresConfig),
            ("[gateway.shared]", SharedConfig),
        )
        for name in _fields(model)
    ],
)
def test_every_setting_is_documented(section: str, name: str) -> None:
    table = OPERATIONS.split(f"### `{section}`", 1)
    assert len(table) == 2, f"OPERATIONS.md has no section for {section}"
    body = table[1].split("\n### ", 1)[0]
    assert f"| `{name}` |" in body, f"{section} {name} is not documented in OPERATIONS.md"


def test_every_worker_route_is_documented(tmp_path: Path) -> None:
    from render_gateway.worker.app import _routes

    for route in _routes():
        assert isinstance(route, Route)
        path = route.path
        if "/versions/{version}" in path:
            continue  # documented once: "Every model route also answers under …/versions/1/…"
        documented = path.replace("{model}", "{m}")
        assert f"`{' '.join(sorted(route.methods - {'HEAD'}))} {documented}`" in WORKER or (
            documented in WORKER
        ), f"route {path} is not documented in WORKER.md"


def test_every_cli_command_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    docs = readme + OPERATIONS + WORKER + API + (ROOT / "docs" / "AUDIT.md").read_text()
    group = get_command(cli_app)
    names: list[str] = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        if subcommands:
            names += [f"{name} {sub}" for sub in subcommands]
        else:
            names.append(name)
    for name in names:
        assert re.search(rf"render-gateway {re.escape(name)}\b", docs), f"`{name}` undocumented"


def test_every_gateway_route_is_documented_and_openapi_is_current() -> None:
    import orjson

    from render_gateway.api.openapi import openapi_document

    document = openapi_document()
    for path in document["paths"]:
        documented = path.replace("{job_id}", "{id}").replace("{asset_id}", "{id}")
        assert f" {documented}`" in API, f"{path} is not documented in API.md"
    stored = orjson.loads((ROOT / "docs" / "openapi.json").read_bytes())
    assert stored == orjson.loads(orjson.dumps(document)), (
        "docs/openapi.json is stale: make openapi"
    )

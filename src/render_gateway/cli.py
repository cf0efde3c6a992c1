"""The one entry point: ``render-gateway``."""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from render_gateway.config import ConfigError, GatewayConfig, ModelConfig, Settings, load_settings

if TYPE_CHECKING:
    from render_gateway.auth.api_keys import ApiKey, SqliteApiKeyStore
    from render_gateway.metering.queries import TimeRange

app = typer.Typer(help="Render: inference gateway for generative media.", no_args_is_help=True)
models_app = typer.Typer(help="Model directories for the reference worker.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (stored as hashes; shown once).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
audit_app = typer.Typer(
    help="The cold path: keys, offline verification, proofs.", no_args_is_help=True
)
app.add_typer(audit_app, name="audit")


class DemoKind(StrEnum):
    image = "image"
    video = "video"


def _offline() -> None:
    # Nothing is ever downloaded: set before diffusers/transformers/huggingface_hub import.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _parse_model(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise typer.BadParameter(f"--model wants NAME=PATH, got {spec!r}")
    return name, Path(path)


@app.command()
def worker(
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (0: any free port).")] = None,
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
    _offline()
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if parent_pid is not None:
        from render_gateway.parent_death import exit_when_parent_exits

        exit_when_parent_exits(parent_pid)
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    cfg = settings.worker
    updates: dict[str, object] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    if device is not None:
        updates["device"] = device
    if data_dir is not None:
        updates["data_dir"] = data_dir
    models = dict(cfg.models)
    for spec in model or []:
        name, path = _parse_model(spec)
        models[name] = ModelConfig(path=path, max_concurrency=max_concurrency or 1)
    if not models:
        typer.echo(
            "error: no models: pass --model NAME=PATH or set [worker.models] in the config",
            err=True,
        )
        raise typer.Exit(2)
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


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _gateway_config(config: Path | None, data_dir: Path | None) -> GatewayConfig:
    gateway = _settings(config).gateway
    return gateway if data_dir is None else gateway.model_copy(update={"data_dir": data_dir})


def _key_store(gateway: GatewayConfig) -> SqliteApiKeyStore:
    from render_gateway.auth.api_keys import SqliteApiKeyStore

    return SqliteApiKeyStore(Path(gateway.data_dir) / "keys.db")


async def _first_admin_key(gateway: GatewayConfig) -> str | None:
    store = _key_store(gateway)
    try:
        if await store.list():
            return None
        _, secret = await store.create("admin", "admin")
        return secret
    finally:
        await store.close()


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where every embedded store lives.")] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Start the gateway (with no backend configured, also a local demo worker). One serve per
    data dir: a second refuses, naming the first's pid. SIGTERM drains running jobs."""
    import asyncio

    from render_gateway.api.serve import StartRefused, listen, run_gateway
    from render_gateway.data_dir_lock import DataDirBusy, lock_data_dir

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    gateway = _gateway_config(config, data_dir)
    updates: dict[str, object] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    gateway = gateway.model_copy(update=updates)
    try:
        # The lock before anything opens a store (it is held until the process ends), then the
        # port, so that neither a second gateway nor a taken port starts anything.
        lock_data_dir(Path(gateway.data_dir))
        sock = listen(gateway.host, gateway.port)
    except (DataDirBusy, StartRefused, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    secret = asyncio.run(_first_admin_key(gateway))
    if secret is not None:
        typer.echo("Created the first API key (customer 'admin', plan 'admin'). It is shown once:")
        typer.echo(secret)
    try:
        run_gateway(gateway, sock, log_level)
    except StartRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@keys_app.command("create")
def keys_create(
    customer: Annotated[str, typer.Option(help="The customer the key bills.")],
    plan: Annotated[str, typer.Option(help="The customer's plan.")] = "default",
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """Create a key; the secret is printed alone on the last line, once."""
    import asyncio

    gateway = _gateway_config(config, data_dir)
    if plan not in gateway.plans:
        typer.echo(
            f"error: unknown plan {plan!r}; configured: {', '.join(sorted(gateway.plans))}",
            err=True,
        )
        raise typer.Exit(2)

    async def create() -> tuple[str, str]:
        store = _key_store(gateway)
        try:
            key, secret = await store.create(customer, plan)
            return key.key_id, secret
        finally:
            await store.close()

    key_id, secret = asyncio.run(create())
    typer.echo(f"key {key_id} for customer {customer!r}, plan {plan!r}:")
    typer.echo(secret)


@keys_app.command("list")
def keys_list(
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """List keys (ids, customers, plans; never secrets)."""
    import asyncio

    from rich.console import Console
    from rich.table import Table

    gateway = _gateway_config(config, data_dir)

    async def listing() -> list[ApiKey]:
        store = _key_store(gateway)
        try:
            return await store.list()
        finally:
            await store.close()

    table = Table("key id", "customer", "plan", "created", "revoked")
    for key in asyncio.run(listing()):
        table.add_row(
            key.key_id, key.customer_id, key.plan, _when(key.created_at), _when(key.revoked_at)
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (key_…).")],
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """Revoke a key at once."""
    import asyncio

    gateway = _gateway_config(config, data_dir)

    async def revoke() -> bool:
        store = _key_store(gateway)
        try:
            return await store.revoke(key_id)
        finally:
            await store.close()

    if not asyncio.run(revoke()):
        typer.echo(f"error: no active key {key_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@app.command()
def usage(
    customer: Annotated[
        str | None, typer.Option(help="Whose usage (default: every customer; over HTTP: yours).")
    ] = None,
    from_: Annotated[str | None, typer.Option("--from", help="Start (ISO 8601, UTC).")] = None,
    to: Annotated[str | None, typer.Option(help="End, exclusive (ISO 8601, UTC).")] = None,
    group_by: Annotated[str, typer.Option(help="model, day, or both.")] = "model,day",
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="RENDER_API_KEY", help="Key for asking a running gateway."),
    ] = None,
    url: Annotated[str | None, typer.Option(help="The running gateway's base URL.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """Usage and cost from the hot path: requests, GPU-seconds and cost by model and day.

    Reads the configured usage store directly; when a running gateway owns the embedded store
    (chDB allows one process), asks that gateway's GET /usage with --api-key instead."""
    from render_gateway.metering.store import UsageStoreError, UsageStoreLocked

    gateway = _gateway_config(config, data_dir)
    try:
        report = _usage_from_store(gateway, customer, from_, to, group_by)
    except UsageStoreLocked as exc:
        key = _key_for_running_gateway(exc, api_key)
        base = url or f"http://{gateway.host}:{gateway.port}"
        report = _usage_over_http(base, key, customer, from_, to, group_by)
    except UsageStoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if json_output:
        import orjson

        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_usage(report)


def _key_for_running_gateway(locked: Exception, api_key: str | None) -> str:
    """The key to ask the gateway that owns the embedded store with; exit 2 without one."""
    if not api_key:
        typer.echo(
            f"error: {locked}\nA running gateway owns the usage store: pass --api-key "
            "(or set RENDER_API_KEY) to ask it over HTTP.",
            err=True,
        )
        raise typer.Exit(2) from locked
    return api_key


def _usage_from_store(
    gateway: GatewayConfig,
    customer: str | None,
    from_: str | None,
    to: str | None,
    group_by: str,
) -> dict[str, Any]:
    from datetime import UTC, datetime

    from render_gateway.core.usage_records import NANOS
    from render_gateway.metering.queries import (
        QueryError,
        TimeRange,
        customer_model_totals,
        parse_group_by,
    )
    from render_gateway.metering.report import usage_report
    from render_gateway.metering.store import default_usage_url, open_usage_store

    try:
        time_range = TimeRange.parse(from_, to, datetime.now(UTC))
        grouping = parse_group_by(group_by)
    except QueryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    metering = gateway.metering
    store = open_usage_store(
        metering.url or default_usage_url(Path(gateway.data_dir)),
        retention_days=metering.retention_days,
    )
    try:
        if customer is not None:
            return usage_report(store, customer, time_range, grouping, gateway.currency)
        rows = [
            {"customer_id": t.customer_id, "model": t.model_name, "requests": t.requests,
             "billable_requests": t.billable_requests,
             "gpu_seconds": round(t.billed_gpu_seconds, 6), "cost": t.cost_nanos / NANOS,
             "cost_nanos": t.cost_nanos}
            for t in customer_model_totals(store, time_range)
        ]  # fmt: skip
        return {"customer_id": None, "from": time_range.start.isoformat(),
                "to": time_range.end.isoformat(), "group_by": ["customer", "model"],
                "currency": gateway.currency, "rows": rows}  # fmt: skip
    finally:
        store.close()


def _usage_over_http(
    base: str, api_key: str, customer: str | None, from_: str | None, to: str | None,
    group_by: str,
) -> dict[str, Any]:  # fmt: skip
    import httpx

    params = {"from": from_, "to": to, "group_by": group_by, "customer_id": customer}
    try:
        response = httpx.get(
            base.rstrip("/") + "/usage",
            params={k: v for k, v in params.items() if v is not None},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the gateway at {base}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if response.status_code != 200:
        typer.echo(f"error: GET /usage answered {response.status_code}: {response.text}", err=True)
        raise typer.Exit(1)
    report: dict[str, Any] = response.json()
    return report


def _print_usage(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = report["rows"]
    columns = [c for c in ("customer_id", "model", "day") if rows and c in rows[0]]
    currency = report["currency"]
    who = report["customer_id"] or "every customer"
    table = Table(*columns, "requests", "billable", "GPU-seconds", f"cost ({currency})",
                  title=f"usage of {who}, {report['from']} to {report['to']}")  # fmt: skip
    for row in rows:
        table.add_row(
            *(str(row[c]) for c in columns), str(row["requests"]), str(row["billable_requests"]),
            f"{row['gpu_seconds']:.6f}", f"{row['cost']:.9f}",
        )  # fmt: skip
    if totals := report.get("totals"):
        table.add_row(
            *(["total"] + [""] * (len(columns) - 1) if columns else []),
            str(totals["requests"]), str(totals["billable_requests"]),
            f"{totals['gpu_seconds']:.6f}", f"{totals['cost']:.9f}", style="bold",
        )  # fmt: skip
    Console().print(table)


def _audit_objects(gateway: GatewayConfig, cas: str | None, create: bool = True) -> Any:
    """The audit store; readers pass ``create=False`` (a missing directory is an error)."""
    from render_gateway.audit.objects import default_cas_url, open_object_store

    try:
        return open_object_store(
            cas or gateway.audit.cas_url or default_cas_url(Path(gateway.data_dir)),
            create=create,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _verifiers(gateway: GatewayConfig, pubkey: Path | None) -> list[Any]:
    """Verifier keys from --pubkey (one per line), else this data dir's own log key (read,
    never created: a verifier writes nothing)."""
    from render_gateway.audit.keys import KEY_FILE
    from render_gateway.audit.signed_note import NoteError, NoteSigner, parse_verifier_key
    from render_gateway.signing_keys import KeyFileError, load_key

    if pubkey is None:
        path = Path(gateway.data_dir) / KEY_FILE
        try:
            signer = NoteSigner(gateway.audit.origin, load_key(path))
        except (OSError, KeyFileError) as exc:
            typer.echo(f"error: no --pubkey and no usable log key at {path}: {exc}", err=True)
            raise typer.Exit(2) from exc
        typer.echo("(no --pubkey: using this data dir's own log key)", err=True)
        return [signer.verifier()]
    try:
        lines = [line.strip() for line in pubkey.read_text().splitlines() if line.strip()]
        return [parse_verifier_key(line) for line in lines]
    except (OSError, NoteError) as exc:
        typer.echo(f"error: cannot use {pubkey} as verifier keys: {exc}", err=True)
        raise typer.Exit(2) from exc


@audit_app.command("pubkey")
def audit_pubkey(
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """Print the log's verifier key (created on first use): all a third party needs."""
    from render_gateway.audit.keys import load_signer, public_key_line

    gateway = _gateway_config(config, data_dir)
    typer.echo(public_key_line(load_signer(Path(gateway.data_dir), gateway.audit.origin)))


@audit_app.command("rotate-key")
def audit_rotate_key(
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """Replace the log key (stop the gateway first); the old key signs the new one."""
    from render_gateway.audit.keys import rotate

    gateway = _gateway_config(config, data_dir)
    old, new = rotate(Path(gateway.data_dir), gateway.audit.origin, _audit_objects(gateway, None))
    typer.echo(f"retired {old}\nnew     {new}")


@audit_app.command("verify")
def audit_verify(
    cas: Annotated[
        str | None, typer.Option(help="The store: file:///dir or s3://bucket/prefix.")
    ] = None,
    pubkey: Annotated[
        Path | None, typer.Option(help="File of verifier keys, one per line.")
    ] = None,
    trusted_checkpoint: Annotated[
        Path | None, typer.Option(help="A signed checkpoint you saw before.")
    ] = None,
    origin: Annotated[str | None, typer.Option(help="The log's expected origin.")] = None,
    skip_claims: Annotated[
        bool,
        typer.Option(
            "--skip-claims",
            help="Do not check the backends' per-record signatures (structure and hashes only).",
        ),
    ] = False,
    node_keys: Annotated[
        Path | None,
        typer.Option(
            "--node-keys",
            help="Pinned backend node keys, one per line ('<key id> <base64>'): every claim "
            "signed by another key fails. Default: the keys the log recorded (trust on first use).",
        ),
    ] = None,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="An empty store verifies (else it fails).")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """Verify the whole audit log offline; exit 0 only if everything holds. Reads only."""
    from rich.progress import Progress

    from render_gateway.audit.keys import trusted_verifiers
    from render_gateway.audit.signed_note import Checkpoint, NoteError, open_note
    from render_gateway.audit.verify import verify_log

    gateway = _gateway_config(config, data_dir)
    pinned = _pinned_node_keys(node_keys)
    objects = _audit_objects(gateway, cas, create=False)
    verifiers = trusted_verifiers(objects, _verifiers(gateway, pubkey))
    trusted = None
    if trusted_checkpoint is not None:
        try:
            text, _ = open_note(trusted_checkpoint.read_bytes(), verifiers)
            trusted = Checkpoint.parse(text)
        except (OSError, NoteError) as exc:
            typer.echo(f"error: the trusted checkpoint does not verify: {exc}", err=True)
            raise typer.Exit(1) from exc
    with Progress(transient=True, disable=json_output) as bar:
        task = bar.add_task("verifying batches", total=None)
        report = verify_log(
            objects, verifiers, origin or gateway.audit.origin, trusted,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            check_claims=not skip_claims, pinned=pinned, allow_empty=allow_empty,
        )  # fmt: skip
    summary = {
        "ok": report.ok, "leaves": report.leaves, "records": report.records,
        "gpu_seconds": report.gpu_seconds, "checkpoints": report.checkpoints,
        "records_without_claim": report.unclaimed, "claims_checked": report.claims_checked,
        "records_with_unverified_claim": len(report.unverified),
        "unverified_claims": [{"where": f.where, "what": f.what} for f in report.unverified],
        "node_keys": "pinned" if report.pinned else "recorded by the log (trust on first use)",
        "recorded_node_keys": [k.key_id for k in report.node_keys],
        "latest_checkpoint_size": report.latest.size if report.latest else None,
        "findings": [{"where": f.where, "what": f.what} for f in report.findings],
    }  # fmt: skip
    if json_output:
        import orjson

        typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        for finding in report.findings:
            typer.echo(f"FAIL {finding}")
        verdict = "verified" if report.ok else f"{len(report.findings)} problem(s)"
        if not report.claims_checked:
            verdict += " (backend claims NOT checked: --skip-claims)"
        typer.echo(
            f"{verdict}: {report.leaves} batches, {report.records} records, "
            f"{report.gpu_seconds:.6f} GPU-seconds, {report.checkpoints} checkpoints"
        )
        anchors = "pinned (--node-keys)" if report.pinned else "as the log recorded them (TOFU)"
        typer.echo(
            f"node keys: {anchors}; {report.unclaimed} records without a backend claim, "
            f"{len(report.unverified)} with a claim the gateway could not verify"
        )
        for finding in report.unverified[:20]:
            typer.echo(f"UNVERIFIED {finding}")
    raise typer.Exit(0 if report.ok else 1)


def _pinned_node_keys(path: Path | None) -> dict[str, str] | None:
    from render_gateway.audit.node_keys import NodeKeyError, read_pinned

    if path is None:
        return None
    try:
        return read_pinned(path)
    except (OSError, NodeKeyError) as exc:
        typer.echo(f"error: cannot use {path} as node keys: {exc}", err=True)
        raise typer.Exit(2) from exc


@audit_app.command("node-keys")
def audit_node_keys(
    cas: Annotated[str | None, typer.Option(help="The store URL.")] = None,
    pubkey: Annotated[
        Path | None, typer.Option(help="File of verifier keys, one per line.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """Print the backend node keys the log recorded, as a --node-keys file (confirm each with
    the backend's operator before pinning it)."""
    from render_gateway.audit.keys import trusted_verifiers
    from render_gateway.audit.node_keys import pinned_line, recorded_node_keys

    gateway = _gateway_config(config, data_dir)
    objects = _audit_objects(gateway, cas, create=False)
    keys, problems = recorded_node_keys(
        objects, trusted_verifiers(objects, _verifiers(gateway, pubkey))
    )
    for where, what in problems:
        typer.echo(f"FAIL {where}: {what}", err=True)
    for key in keys:
        typer.echo(pinned_line(key))
    raise typer.Exit(1 if problems else 0)


@audit_app.command("prove")
def audit_prove(
    request_id: Annotated[str, typer.Argument(help="The request to prove (req_…).")],
    out: Annotated[
        Path | None, typer.Option(help="Write the bundle here (default: stdout).")
    ] = None,
    cas: Annotated[str | None, typer.Option(help="The store URL.")] = None,
    origin: Annotated[str | None, typer.Option(help="The log's origin (its key name).")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """Write a self-contained inclusion proof for one request's attestation."""
    import orjson

    from render_gateway.audit.keys import load_signer, public_key_line
    from render_gateway.audit.proofs import ProofNotFound, bundle_from_store

    gateway = _gateway_config(config, data_dir)
    signer = load_signer(Path(gateway.data_dir), origin or gateway.audit.origin)
    try:
        bundle = bundle_from_store(
            _audit_objects(gateway, cas, create=False), [signer.verifier()],
            public_key_line(signer), request_id,
        )  # fmt: skip
    except ProofNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    text = orjson.dumps(bundle, option=orjson.OPT_INDENT_2).decode()
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n")
        typer.echo(f"wrote {out}", err=True)


@audit_app.command("verify-proof")
def audit_verify_proof(
    bundle_file: Annotated[Path, typer.Argument(help="A bundle from `audit prove`.")],
    pubkey: Annotated[
        Path | None, typer.Option(help="Verifier keys (default: the key in the bundle).")
    ] = None,
    node_keys: Annotated[
        Path | None,
        typer.Option("--node-keys", help="Pinned backend node keys (as for audit verify)."),
    ] = None,
) -> None:
    """Check an inclusion proof offline; exit 0 only if it holds."""
    import orjson

    from render_gateway.audit.proofs import BundleError, verify_bundle
    from render_gateway.audit.signed_note import NoteError, parse_verifier_key

    try:
        bundle = orjson.loads(bundle_file.read_bytes())
        if pubkey is not None:
            lines = [x.strip() for x in pubkey.read_text().splitlines() if x.strip()]
            verifiers = [parse_verifier_key(line) for line in lines]
        else:
            verifiers = [parse_verifier_key(bundle["log_public_key"])]
            typer.echo(
                "(no --pubkey: checked against the key inside the bundle; compare it with the "
                f"published one: {bundle['log_public_key']})",
                err=True,
            )
        row, checkpoint = verify_bundle(bundle, verifiers, _pinned_node_keys(node_keys))
    except (OSError, orjson.JSONDecodeError, NoteError, KeyError, TypeError, BundleError) as exc:
        typer.echo(f"FAIL: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"verified: request {row['request_id']} ({row['customer_id']}, {row['model']}, "
        f"{row['gpu_seconds']} GPU-seconds, {row['status']}) is in {checkpoint.origin} "
        f"at size {checkpoint.size}"
    )
    if row.get("claim_error") is not None:
        typer.echo(f"UNVERIFIED backend claim (at settle): {row['claim_error']}")
    elif row["claim_payload"] is None:
        typer.echo("no backend claim: the GPU-seconds rest on the log key alone")


@app.command()
def reconcile(
    from_: Annotated[str | None, typer.Option("--from", help="Start (ISO 8601, UTC).")] = None,
    to: Annotated[str | None, typer.Option(help="End, exclusive (ISO 8601, UTC).")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Relative delta allowed per (customer, model).")
    ] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Re-insert into ClickHouse what only CAS has.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="RENDER_API_KEY", help="Admin key for asking a running gateway."),
    ] = None,
    url: Annotated[str | None, typer.Option(help="The running gateway's base URL.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
) -> None:
    """Hot path against cold path over a window; exit 0 when reconciled, 1 on discrepancies
    (listed), 2 when either side cannot be read."""
    from datetime import UTC, datetime

    from render_gateway.metering.queries import QueryError, TimeRange
    from render_gateway.metering.store import UsageStoreError, UsageStoreLocked

    gateway = _gateway_config(config, data_dir)
    try:  # one window, whichever way the run goes
        window = TimeRange.parse(from_, to, datetime.now(UTC))
    except QueryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    limit = gateway.reconcile.threshold if threshold is None else threshold
    try:
        report = _reconcile_here(gateway, window, limit, repair)
    except UsageStoreLocked as exc:
        key = _key_for_running_gateway(exc, api_key)
        report = _reconcile_over_http(
            url or f"http://{gateway.host}:{gateway.port}", key, window, limit, repair
        )
    except UsageStoreError as exc:
        report = {"status": "error", "error": f"the hot path (ClickHouse) is unreachable: {exc}"}
    if json_output:
        import orjson

        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_reconciliation(report)
    raise typer.Exit({"reconciled": 0, "discrepancies": 1}.get(report["status"], 2))


def _reconcile_here(
    gateway: GatewayConfig, window: TimeRange, threshold: float, repair: bool
) -> dict[str, Any]:
    from datetime import UTC, datetime

    from render_gateway.audit.keys import load_signer
    from render_gateway.audit.reconcile import reconcile as run_reconcile
    from render_gateway.audit.reconcile_runs import record_run
    from render_gateway.metering.store import default_usage_url, open_usage_store

    metering = gateway.metering
    store = open_usage_store(
        metering.url or default_usage_url(Path(gateway.data_dir)),
        retention_days=metering.retention_days,
    )
    try:
        objects = _audit_objects(gateway, None)
        started = datetime.now(UTC)
        result = run_reconcile(store, objects, window, threshold, repair=repair)
        signer = load_signer(Path(gateway.data_dir), gateway.audit.origin)
        record_run(result, started, store, objects, signer)
        return result.to_json()
    finally:
        store.close()


def _reconcile_over_http(
    base: str, api_key: str, window: TimeRange, threshold: float, repair: bool
) -> dict[str, Any]:
    import httpx

    body = {"from": window.start.isoformat(), "to": window.end.isoformat(),
            "threshold": threshold, "repair": repair}  # fmt: skip
    try:
        response = httpx.post(
            base.rstrip("/") + "/reconciliations",
            json={k: v for k, v in body.items() if v is not None},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=600,
        )
    except httpx.HTTPError as exc:
        return {"status": "error", "error": f"cannot reach the gateway at {base}: {exc}"}
    if response.status_code != 200:
        return {"status": "error", "error": f"POST /reconciliations: {response.text}"}
    report: dict[str, Any] = response.json()
    return report


def _print_reconciliation(report: dict[str, Any]) -> None:
    status = report["status"]
    if status == "error":
        typer.echo(f"ERROR: {report.get('error')}")
        return
    typer.echo(
        f"{status}: {report['window_start']} to {report['window_end']}: hot "
        f"{report['hot_requests']} requests / {report['hot_gpu_seconds']:.6f} GPU-s, cold "
        f"{report['cold_requests']} / {report['cold_gpu_seconds']:.6f}"
    )
    for key in report["keys"]:
        typer.echo(
            f"  {key['customer_id']} {key['model']}: requests {key['hot_requests']} vs "
            f"{key['cold_requests']}, GPU-s {key['hot_gpu_seconds']:.6f} vs "
            f"{key['cold_gpu_seconds']:.6f} ({key['relative_gpu_seconds']:.4%})"
        )
    for name in ("missing_in_hot", "missing_in_cold", "duplicated_in_hot"):
        if report[name]:
            shown = ", ".join(report[name])
            typer.echo(f"  {name} ({report['counts'][name]}): {shown}")
    for item in report["gpu_mismatches"]:
        typer.echo(
            f"  gpu_mismatch {item['request_id']}: hot {item['hot_gpu_seconds']} vs cold "
            f"{item['cold_gpu_seconds']}"
        )
    for batch in report["unreadable_batches"]:
        typer.echo(f"  unreadable batch: {batch}")
    if report.get("repaired"):
        typer.echo(f"  repaired: {report['repaired']} records re-inserted into ClickHouse")


def _when(moment: float | None) -> str:
    from datetime import UTC, datetime

    return (
        "" if moment is None else datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    )


@models_app.command("make-demo")
def make_demo(
    directory: Annotated[Path, typer.Argument(help="Where to write the pipeline.")],
    kind: Annotated[
        DemoKind, typer.Option(help="image: t2i, i2i, edit; video: t2v.")
    ] = DemoKind.image,
) -> None:
    """Write a tiny, randomly initialised diffusion pipeline (no download)."""
    _offline()
    from render_gateway.worker.demo import make_demo_pipeline

    if directory.exists() and any(directory.iterdir()):
        typer.echo(f"error: {directory} exists and is not empty", err=True)
        raise typer.Exit(2)
    make_demo_pipeline(directory, kind.value)
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    typer.echo(
        f"wrote a tiny demo pipeline to {directory} ({size / 1e6:.1f} MB; "
        "random weights, so its output looks like noise)"
    )


def main() -> None:
    app()

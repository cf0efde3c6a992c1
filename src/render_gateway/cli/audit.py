"""``render-gateway audit``: the cold path's keys, offline verification and proofs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from render_gateway.cli.common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    audit_objects,
    fail,
    gateway_config,
)
from render_gateway.config import GatewayConfig

if TYPE_CHECKING:
    from render_gateway.audit.signed_note import NoteVerifier

audit_app = typer.Typer(
    help="The cold path: keys, offline verification, proofs.", no_args_is_help=True
)


def verifier_keys(gateway: GatewayConfig, pubkey: Path | None) -> list[NoteVerifier]:
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
            fail(f"no --pubkey and no usable log key at {path}: {exc}", 2)
        typer.echo("(no --pubkey: using this data dir's own log key)", err=True)
        return [signer.verifier()]
    try:
        lines = [line.strip() for line in pubkey.read_text().splitlines() if line.strip()]
        return [parse_verifier_key(line) for line in lines]
    except (OSError, NoteError) as exc:
        fail(f"cannot use {pubkey} as verifier keys: {exc}", 2)


@audit_app.command("pubkey")
def audit_pubkey(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print the log's verifier key (created on first use): all a third party needs."""
    from render_gateway.audit.keys import load_signer, public_key_line

    gateway = gateway_config(config, data_dir)
    signer = load_signer(Path(gateway.data_dir), gateway.audit.origin, gateway.audit.key_file)
    typer.echo(public_key_line(signer))


@audit_app.command("rotate-key")
def audit_rotate_key(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Replace the log key (stop the gateway first); the old key signs the new one."""
    from render_gateway.audit.keys import rotate

    gateway = gateway_config(config, data_dir)
    old, new = rotate(Path(gateway.data_dir), gateway.audit.origin, audit_objects(gateway, None))
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
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Processes that check batches. Default: every core for a file:// log of 200,000 "
            "records or more (2,000,000 with --skip-claims), else one.",
        ),
    ] = None,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Verify the whole audit log offline; exit 0 only if everything holds. Reads only."""
    from rich.progress import Progress

    from render_gateway.audit.keys import trusted_verifiers
    from render_gateway.audit.signed_note import Checkpoint, NoteError, open_note
    from render_gateway.audit.verify import verify_log

    gateway = gateway_config(config, data_dir)
    pinned = pinned_node_keys(node_keys)
    objects = audit_objects(gateway, cas, create=False)
    verifiers = trusted_verifiers(objects, verifier_keys(gateway, pubkey))
    trusted = None
    if trusted_checkpoint is not None:
        try:
            text, _ = open_note(trusted_checkpoint.read_bytes(), verifiers)
            trusted = Checkpoint.parse(text)
        except (OSError, NoteError) as exc:
            fail(f"the trusted checkpoint does not verify: {exc}", 1)
    with Progress(transient=True, disable=json_output) as bar:
        task = bar.add_task("verifying batches", total=None)
        report = verify_log(
            objects, verifiers, origin or gateway.audit.origin, trusted,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            check_claims=not skip_claims, pinned=pinned, allow_empty=allow_empty,
            workers=workers,
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


def pinned_node_keys(path: Path | None) -> dict[str, str] | None:
    from render_gateway.audit.node_keys import NodeKeyError, read_pinned

    if path is None:
        return None
    try:
        return read_pinned(path)
    except (OSError, NodeKeyError) as exc:
        fail(f"cannot use {path} as node keys: {exc}", 2)


@audit_app.command("node-keys")
def audit_node_keys(
    cas: Annotated[str | None, typer.Option(help="The store URL.")] = None,
    pubkey: Annotated[
        Path | None, typer.Option(help="File of verifier keys, one per line.")
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print the backend node keys the log recorded, as a --node-keys file (confirm each with
    the backend's operator before pinning it)."""
    from render_gateway.audit.keys import trusted_verifiers
    from render_gateway.audit.node_keys import pinned_line, recorded_node_keys

    gateway = gateway_config(config, data_dir)
    objects = audit_objects(gateway, cas, create=False)
    keys, problems = recorded_node_keys(
        objects, trusted_verifiers(objects, verifier_keys(gateway, pubkey))
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
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Write a self-contained inclusion proof for one request's attestation."""
    import orjson

    from render_gateway.audit.keys import load_signer, public_key_line
    from render_gateway.audit.proofs import ProofNotFound, bundle_from_store

    gateway = gateway_config(config, data_dir)
    signer = load_signer(Path(gateway.data_dir), origin or gateway.audit.origin)
    try:
        bundle = bundle_from_store(
            audit_objects(gateway, cas, create=False), [signer.verifier()],
            public_key_line(signer), request_id,
        )  # fmt: skip
    except ProofNotFound as exc:
        fail(str(exc), 1)
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
        row, checkpoint = verify_bundle(bundle, verifiers, pinned_node_keys(node_keys))
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

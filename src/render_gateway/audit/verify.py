"""Offline verification of the audit log: from the stored objects and the log's public key(s)
alone, re-derive everything and name every way in which it does not hold."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from render_gateway.audit.attestations import from_parquet, records_root
from render_gateway.audit.cas import ContentStore, IntegrityError
from render_gateway.audit.leaves import (
    CHECKPOINTS_PREFIX,
    LEAVES_PREFIX,
    BatchLeaf,
    LeafError,
    index_of,
)
from render_gateway.audit.merkle import MerkleLog
from render_gateway.audit.objects import ObjectMissing, ObjectStore
from render_gateway.audit.reconcile_runs import verify_runs
from render_gateway.audit.signed_note import Checkpoint, NoteError, NoteVerifier, open_note
from render_gateway.signing_keys import key_id as node_key_id
from render_gateway.usage_claim import InvalidClaim, SignedClaim, verify_claim


@dataclass(frozen=True)
class Finding:
    where: str  # e.g. "leaf 3 (batch 9f2c…)", "checkpoint 12", "batch 4 record 17 (req_…)"
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class Report:
    leaves: int = 0
    records: int = 0
    gpu_seconds: float = 0.0
    checkpoints: int = 0
    unclaimed: int = 0  # records without a backend claim (backends that sign nothing)
    claims_checked: bool = True
    reconciliations: int = 0  # signed reconciliation entries, chained
    latest: Checkpoint | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def fail(self, where: str, what: str) -> None:
        self.findings.append(Finding(where, what))


def verify_log(
    objects: ObjectStore,
    verifiers: Sequence[NoteVerifier],
    origin: str | None = None,
    trusted: Checkpoint | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    check_claims: bool = True,
) -> Report:
    """Everything verify checks; ``check_claims=False`` skips the backends' per-record Ed25519
    signatures (the slow part), checking only the log's own structure and hashes."""
    report = Report(claims_checked=check_claims)
    leaves = _load_leaves(objects, report)
    tree = MerkleLog(leaf.hash for leaf in leaves)
    report.leaves = tree.size
    _check_batches(ContentStore(objects), leaves, report, progress)
    _check_checkpoints(objects, verifiers, origin, tree, report)
    if trusted is not None:
        _check_trusted(trusted, tree, report)
    entries, problems = verify_runs(objects, list(verifiers))
    report.reconciliations = len(entries)
    for problem in problems:
        where, _, what = problem.partition(": ")
        report.fail(where, what)
    return report


def _load_leaves(objects: ObjectStore, report: Report) -> list[BatchLeaf]:
    """Leaves in index order; gaps, misplaced, replayed or malformed leaves are findings."""
    leaves: list[BatchLeaf] = []
    seen_batches: dict[str, int] = {}
    for position, key in enumerate(objects.list(LEAVES_PREFIX)):
        where = f"leaf {key.removeprefix(LEAVES_PREFIX)}"
        try:
            index = index_of(key, LEAVES_PREFIX)
            leaf = BatchLeaf.decode(objects.get(key))
        except (ValueError, LeafError) as exc:
            report.fail(where, f"not a valid leaf: {exc}")
            continue
        if index != position:
            report.fail(where, f"expected leaf {position} here: a leaf is missing before it")
        if leaf.index != index:
            report.fail(where, f"holds leaf {leaf.index}: leaves were reordered or copied")
        if (first := seen_batches.get(leaf.batch_blake3)) is not None:
            report.fail(where, f"replays batch {leaf.batch_blake3[:16]}… of leaf {first}")
        seen_batches.setdefault(leaf.batch_blake3, leaf.index)
        if leaves:
            previous = leaves[-1]
            if leaf.timestamp_us <= previous.timestamp_us:
                report.fail(where, "its timestamp does not increase along the log")
            if leaf.first_usage_seq != previous.last_usage_seq + 1:
                report.fail(
                    where,
                    f"holds usage records from {leaf.first_usage_seq}, but the previous leaf "
                    f"ended at {previous.last_usage_seq}: records replayed, reordered or missing",
                )
        leaves.append(leaf)
    return leaves


def _check_batches(
    cas: ContentStore,
    leaves: Sequence[BatchLeaf],
    report: Report,
    progress: Callable[[int, int], None],
) -> None:
    node_keys: dict[str, Ed25519PublicKey] = {}
    for done, leaf in enumerate(leaves):
        where = f"leaf {leaf.index} (batch {leaf.batch_blake3[:16]}…)"
        try:
            rows = from_parquet(cas.get(leaf.batch_blake3))
        except IntegrityError:
            report.fail(where, "the batch's bytes do not match its hash (altered)")
            continue
        except ObjectMissing:
            report.fail(where, "the batch is missing from the store (deleted)")
            continue
        except ValueError as exc:
            report.fail(where, f"the batch cannot be read: {exc}")
            continue
        _check_batch(leaf, rows, where, report, node_keys)
        progress(done + 1, len(leaves))


def _check_batch(
    leaf: BatchLeaf,
    rows: list[dict[str, Any]],
    where: str,
    report: Report,
    node_keys: dict[str, Ed25519PublicKey],
) -> None:
    gpu_seconds = math.fsum(float(row["gpu_seconds"]) for row in rows)
    if len(rows) != leaf.count:
        report.fail(where, f"holds {len(rows)} records, its leaf says {leaf.count}")
    if records_root(rows).hex() != leaf.records_root:
        report.fail(where, "its records do not hash to the leaf's records root")
    if not math.isclose(gpu_seconds, leaf.gpu_seconds, rel_tol=1e-12, abs_tol=1e-9):
        report.fail(where, f"sums to {gpu_seconds} GPU-seconds, its leaf says {leaf.gpu_seconds}")
    seqs = [int(row["usage_seq"]) for row in rows]
    if seqs != list(range(leaf.first_usage_seq, leaf.last_usage_seq + 1)):
        report.fail(where, "its usage records are not the leaf's contiguous range")
    for position, row in enumerate(rows):
        report.unclaimed += row["claim_payload"] is None
        if not report.claims_checked:
            continue
        problem = claim_problem(row, node_keys)
        if problem:
            report.fail(f"{where} record {position} ({row['request_id']})", problem)
    report.records += len(rows)
    report.gpu_seconds += gpu_seconds


def claim_problem(row: dict[str, Any], node_keys: dict[str, Ed25519PublicKey]) -> str | None:
    """Why the row's backend claim does not hold (None when it holds or there is none)."""
    if row["claim_payload"] is None:
        return None  # a backend that signs nothing (a plain Triton model): counted, not failed
    if row["claim_signature"] is None or row["node_public_key"] is None:
        return "the backend's claim has no signature or no node key to check it with"
    try:
        raw = base64.b64decode(row["node_public_key"], validate=True)
        key = node_keys.get(raw.hex()) or Ed25519PublicKey.from_public_bytes(raw)
        node_keys[raw.hex()] = key
        if node_key_id(key) != row["node_key_id"]:
            return "the node key does not match the claim's key id"
        signed = SignedClaim(
            row["claim_payload"].encode(),
            base64.b64decode(row["claim_signature"], validate=True),
            row["node_key_id"],
        )
        claim = verify_claim(signed, key)
    except (InvalidClaim, ValueError) as exc:
        return f"the backend's claim does not verify: {exc}"
    if claim.request_id != row["request_id"]:
        return f"the claim is for request {claim.request_id}, not this one"
    if not math.isclose(claim.gpu_seconds, row["gpu_seconds"], rel_tol=1e-9, abs_tol=1e-9):
        return f"records {row['gpu_seconds']} GPU-seconds, the backend claimed {claim.gpu_seconds}"
    return None


def _check_checkpoints(
    objects: ObjectStore,
    verifiers: Sequence[NoteVerifier],
    origin: str | None,
    tree: MerkleLog,
    report: Report,
) -> None:
    keys = objects.list(CHECKPOINTS_PREFIX)
    previous: Checkpoint | None = None
    for key in keys:
        where = f"checkpoint {key.removeprefix(CHECKPOINTS_PREFIX).lstrip('0') or '0'}"
        try:
            size = index_of(key, CHECKPOINTS_PREFIX)
            text, _ = open_note(objects.get(key), verifiers)
            checkpoint = Checkpoint.parse(text)
        except (NoteError, ValueError) as exc:
            report.fail(where, f"does not verify: {exc}")
            continue
        report.checkpoints += 1
        if checkpoint.size != size:
            report.fail(where, f"is stored as size {size} but signs size {checkpoint.size}")
        if origin is not None and checkpoint.origin != origin:
            report.fail(where, f"is for log {checkpoint.origin!r}, not {origin!r}")
        if checkpoint.size > tree.size:
            report.fail(
                where,
                f"signs {checkpoint.size} leaves but the log has {tree.size}: truncated",
            )
        elif tree.root_at(checkpoint.size) != checkpoint.root_hash:
            report.fail(where, "its root does not match the log's leaves (log rewritten)")
        if previous is not None and checkpoint.size <= previous.size:
            report.fail(where, "does not grow the log")
        previous = checkpoint
    report.latest = previous
    if previous is None and tree.size:
        report.fail("log", "no signed checkpoint covers it")
    elif previous is not None and previous.size < tree.size:
        report.fail("log", f"{tree.size - previous.size} leaves are not covered by a checkpoint")


def _check_trusted(trusted: Checkpoint, tree: MerkleLog, report: Report) -> None:
    if trusted.size > tree.size:
        report.fail(
            "trusted checkpoint",
            f"has {trusted.size} leaves, the log only {tree.size}: rolled back or truncated",
        )
    elif tree.root_at(trusted.size) != trusted.root_hash:
        report.fail("trusted checkpoint", "the log is not an extension of it (forked)")

"""Inclusion proofs for one request: a self-contained bundle a customer can check offline.

The bundle chains the request's attestation row to a signed checkpoint in two RFC 6962 steps:
row → its batch's records root (held in the leaf), and leaf → the log root the checkpoint
signs. With the log's public key, nothing else is needed to check it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from render_gateway.audit.attestations import (
    ROW_V1,
    SCHEMAS,
    SERIAL_READ,
    canonical,
    encode_json_row,
    read_batch,
    rows_table,
    table_leaf_hashes,
)
from render_gateway.audit.cas import ContentStore
from render_gateway.audit.leaves import CHECKPOINTS_PREFIX, LEAVES_PREFIX, BatchLeaf
from render_gateway.audit.log import AuditLog
from render_gateway.audit.merkle import MerkleLog, leaf_hash, verify_inclusion
from render_gateway.audit.proof_index import ProofIndex
from render_gateway.audit.signed_note import Checkpoint, NoteVerifier, open_note
from render_gateway.audit.verify import claim_problem
from render_gateway.stores.objects import ObjectStore

BUNDLE_VERSION = 1


class ProofNotFound(LookupError):
    pass


class BundleError(ValueError):
    """The bundle does not prove what it claims; the message says which step failed."""


def locate(
    cas: ContentStore, leaves: Sequence[BatchLeaf], request_id: str
) -> tuple[BatchLeaf, pa.Table, int]:
    """The leaf, its batch and the row index holding ``request_id`` (newest batches first)."""
    for leaf in reversed(leaves):
        data = cas.get(leaf.batch_blake3)
        table = pq.read_table(io.BytesIO(data), columns=["request_id"], **SERIAL_READ)
        ids = table.column(0).to_pylist()
        if request_id in ids:
            return leaf, read_batch(data, leaf.version), ids.index(request_id)
    raise ProofNotFound(f"no attestation for request {request_id!r} in the log")


def make_bundle(
    tree: MerkleLog,
    checkpoint_note: bytes,
    checkpoint: Checkpoint,
    verifier_key: str,
    leaf: BatchLeaf,
    rows: pa.Table | Sequence[Mapping[str, Any]],
    row_index: int,
) -> dict[str, Any]:
    """The bundle for row ``row_index`` of ``leaf``'s batch (its table, or its rows)."""
    if not isinstance(rows, pa.Table):
        rows = rows_table(rows, SCHEMAS[leaf.version])
    if leaf.index >= checkpoint.size:
        raise ProofNotFound("the request's batch is not yet covered by a signed checkpoint")
    log_proof = tree.inclusion_proof(leaf.index, checkpoint.size)
    return _bundle(checkpoint_note, verifier_key, leaf, log_proof, rows, row_index)


def _bundle(
    checkpoint_note: bytes,
    verifier_key: str,
    leaf: BatchLeaf,
    log_proof: Sequence[bytes],
    batch: pa.Table,
    row_index: int,
) -> dict[str, Any]:
    row_proof = MerkleLog(table_leaf_hashes(batch, leaf.version)).inclusion_proof(row_index)
    # Shown as canonical JSON whatever the version: a version-2 row's verifier re-encodes it.
    row = batch.slice(row_index, 1).to_pylist()[0]
    return {
        "version": BUNDLE_VERSION,
        "log_public_key": verifier_key,
        "checkpoint": checkpoint_note.decode(),
        "leaf": leaf.encode().decode(),
        "leaf_index": leaf.index,
        "log_proof": [base64.b64encode(h).decode() for h in log_proof],
        "row": canonical(row, batch.schema.names).decode(),
        "row_index": row_index,
        "row_proof": [base64.b64encode(h).decode() for h in row_proof],
    }


def verify_bundle(
    bundle: dict[str, Any],
    verifiers: Sequence[NoteVerifier],
    pinned: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], Checkpoint]:
    """The attested row and the checkpoint it is in, or BundleError naming the failed step.
    ``pinned`` (key id → base64 node key): the row's claim must be signed by one of them. A row
    whose claim the gateway could not verify when it settled proves its place in the log only
    (its ``claim_error`` says why)."""
    try:
        if bundle.get("version") != BUNDLE_VERSION:
            raise BundleError(f"unknown bundle version {bundle.get('version')!r}")
        text, _ = open_note(bundle["checkpoint"].encode(), verifiers)
        checkpoint = Checkpoint.parse(text)
        leaf_bytes = bundle["leaf"].encode()
        leaf = BatchLeaf.decode(leaf_bytes)
        if leaf.index != bundle["leaf_index"]:
            raise BundleError("the leaf's own index differs from the bundle's")
        verify_inclusion(
            leaf_hash(leaf_bytes), leaf.index, checkpoint.size,
            [base64.b64decode(h, validate=True) for h in bundle["log_proof"]],
            checkpoint.root_hash,
        )  # fmt: skip
        row_bytes = bundle["row"].encode()
        row = orjson.loads(row_bytes)
        if not isinstance(row, dict):
            raise BundleError("the row is not a JSON object")
        # The leaf (in the signed tree) says how its rows were hashed: as this JSON (version
        # 1), or as the binary encoding of the row it holds (version 2).
        schema = SCHEMAS[leaf.version]
        hashed = row_bytes if leaf.version == ROW_V1 else encode_json_row(row, schema)
        if canonical(row, schema.names) != row_bytes:
            raise BundleError("the row is not in canonical form")
        verify_inclusion(
            leaf_hash(hashed), bundle["row_index"], leaf.count,
            [base64.b64decode(h, validate=True) for h in bundle["row_proof"]],
            bytes.fromhex(leaf.records_root),
        )  # fmt: skip
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError) as exc:  # ProofError and NoteError are ValueErrors
        raise BundleError(str(exc)) from exc
    if row.get("claim_error") is None and (problem := claim_problem(row, {})):
        raise BundleError(f"the attested record's backend claim: {problem}")
    checked = row.get("claim_error") is None and row["claim_payload"] is not None
    if pinned is not None and checked and row["node_public_key"] not in pinned.values():
        raise BundleError(
            f"the attested record's backend claim is signed by node key "
            f"{row['node_key_id']}, which is not a pinned node key"
        )
    return row, checkpoint


def bundle_from_store(
    objects: ObjectStore,
    verifiers: Sequence[NoteVerifier],
    verifier_key: str,
    request_id: str,
    customer_id: str | None = None,
) -> dict[str, Any]:
    """Read the log from ``objects`` and prove ``request_id`` (only ``customer_id``'s, if
    given) against the latest signed checkpoint."""
    leaves = [BatchLeaf.decode(objects.get(key)) for key in objects.list(LEAVES_PREFIX)]
    checkpoints = objects.list(CHECKPOINTS_PREFIX)
    if not checkpoints:
        raise ProofNotFound("the log has no signed checkpoint yet")
    note = objects.get(checkpoints[-1])
    text, _ = open_note(note, verifiers)
    checkpoint = Checkpoint.parse(text)
    covered = leaves[: checkpoint.size]
    leaf, rows, index = locate(ContentStore(objects), covered, request_id)
    if customer_id is not None and rows.column("customer_id")[index].as_py() != customer_id:
        raise ProofNotFound(f"no attestation for request {request_id!r} in the log")
    tree = MerkleLog(item.hash for item in covered)
    return make_bundle(tree, note, checkpoint, verifier_key, leaf, rows, index)


def bundle_from_log(
    audit_log: AuditLog,
    index: ProofIndex,
    verifier_key: str,
    request_id: str,
    customer_id: str | None = None,
) -> dict[str, Any]:
    """Prove ``request_id`` from the gateway's open log: one index lookup and one batch read
    (an unknown id, or another customer's, reads nothing)."""
    found = index.find(request_id)
    if found is None or (customer_id is not None and found.customer_id != customer_id):
        raise ProofNotFound(f"no attestation for request {request_id!r} in the log")
    with audit_log.lock:  # the checkpoint and the tree it signs, as one snapshot
        checkpoint, note = audit_log.checkpoint, audit_log.checkpoint_note
        leaf = audit_log.leaves[found.leaf]
        if checkpoint is None or note is None or leaf.index >= checkpoint.size:
            raise ProofNotFound("the request's batch is not yet covered by a signed checkpoint")
        log_proof = audit_log.tree.inclusion_proof(leaf.index, checkpoint.size)
    rows = read_batch(audit_log.cas.get(leaf.batch_blake3), leaf.version)
    if found.row >= rows.num_rows or rows.column("request_id")[found.row].as_py() != request_id:
        raise ProofNotFound(f"the proof index is out of step with leaf {leaf.index}")
    return _bundle(note, verifier_key, leaf, log_proof, rows, found.row)

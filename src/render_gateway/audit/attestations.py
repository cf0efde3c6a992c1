"""Attestations: one row per finished request, the authoritative usage record of the cold path.

A row is the usage record plus the backend's signed claim split into its parts (payload,
signature, node key id, and the node's public key that verified it when the request settled),
so a verifier can check the claim without asking anyone. A claim that did not verify at settle
time is kept with the reason (``claim_error``) and no key: the row says what is not proven.
Rows hold only text, integers, floats, booleans and nulls, so the canonical JSON a batch's
records root is computed over reads back from Parquet exactly as it was written.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from render_gateway.audit.merkle import leaf_hash, root

ATTESTATION_VERSION = 1

SCHEMA = pa.schema(
    [
        ("usage_seq", pa.int64()),  # the record's place in the gateway's usage log
        ("event_id", pa.string()),
        ("request_id", pa.string()),
        ("job_id", pa.string()),
        ("customer_id", pa.string()),
        ("plan", pa.string()),
        ("tier", pa.string()),
        ("model", pa.string()),
        ("backend", pa.string()),
        ("device_uuid", pa.string()),
        ("device_kind", pa.string()),
        ("status", pa.string()),
        ("error_code", pa.string()),
        ("ended_at_us", pa.int64()),
        ("queue_time_us", pa.int64()),
        ("inference_time_us", pa.int64()),
        ("gpu_seconds", pa.float64()),
        ("metered", pa.bool_()),
        ("billable", pa.bool_()),
        ("unit_price", pa.float64()),
        ("currency", pa.string()),
        ("cost_nanos", pa.int64()),
        ("claim_payload", pa.string()),
        ("claim_signature", pa.string()),
        ("node_key_id", pa.string()),
        ("node_public_key", pa.string()),
        ("claim_error", pa.string()),  # why the claim did not verify at settle (else null)
    ]
)
COLUMNS = tuple(SCHEMA.names)


def attestation(usage_seq: int, record: Mapping[str, Any]) -> dict[str, Any]:
    """The row for one usage record, with the node key its claim was verified with when the
    request settled (never looked up now: a key learned later, or never, cannot change it)."""
    payload = signature = key_id = None
    public_key, claim_error = record.get("node_public_key"), record.get("claim_error")
    if text := record.get("usage_claim"):
        # Split as the backend sent it (a malformed one is kept whole, with its claim_error).
        try:
            envelope = orjson.loads(text)
            payload, signature = str(envelope["payload"]), str(envelope["signature"])
            key_id = str(envelope["key_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            payload, signature, key_id = str(text), None, None
        if public_key is None and claim_error is None:  # a record from before settle checks
            claim_error = "the claim was not checked when the request settled"
    else:
        public_key = claim_error = None
    return {
        "usage_seq": usage_seq,
        "event_id": record["event_id"],
        "request_id": record["request_id"],
        "job_id": record.get("job_id"),
        "customer_id": record["customer_id"],
        "plan": record["plan"],
        "tier": record["tier"],
        "model": f"{record['modality']}/{record['family']}/{record['model']}",
        "backend": record.get("backend"),
        "device_uuid": record.get("device_uuid"),
        "device_kind": record.get("device_kind"),
        "status": record["status"],
        "error_code": record.get("error_code"),
        "ended_at_us": round(record["timestamp"] * 1_000_000),
        "queue_time_us": int(record["queue_time_us"]),
        "inference_time_us": int(record["inference_time_us"]),
        "gpu_seconds": float(record["gpu_seconds"]),
        "metered": bool(record["metered"]),
        "billable": bool(record["billable"]),
        "unit_price": float(record["unit_price"]),
        "currency": record["currency"],
        "cost_nanos": int(record["cost_nanos"]),
        "claim_payload": payload,
        "claim_signature": signature,
        "node_key_id": key_id,
        "node_public_key": public_key,
        "claim_error": claim_error,
    }


def canonical(row: Mapping[str, Any]) -> bytes:
    """The bytes a row is hashed as: JSON with sorted keys, in the table's columns only."""
    if len(row) != len(COLUMNS):  # only the table's columns are hashed (a row read back has
        row = {name: row[name] for name in COLUMNS}  # exactly these; anything else is cut)
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS)


def row_leaf_hashes(rows: Sequence[Mapping[str, Any]]) -> list[bytes]:
    return [leaf_hash(canonical(row)) for row in rows]


def records_root(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """RFC 6962 root over the batch's rows in order: proves one row's place in its batch."""
    return root(row_leaf_hashes(rows))


def to_parquet(rows: Sequence[Mapping[str, Any]]) -> bytes:
    table = pa.Table.from_pydict({name: [row[name] for row in rows] for name in COLUMNS}, SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    return sink.getvalue()


# A batch is small (≤ batch_records rows, in memory): read it on the calling thread. Arrow's
# pool threads left alive can abort a CLI process at exit after its work is done ("terminate
# called without an active exception", apache/arrow#34314), failing `audit prove` about one run
# in seven here.
SERIAL_READ: dict[str, Any] = {"use_threads": False, "pre_buffer": False}


def from_parquet(data: bytes) -> list[dict[str, Any]]:
    """Rows of a batch file; raises ValueError if it is not a batch of this schema."""
    try:
        table = pq.read_table(io.BytesIO(data), **SERIAL_READ)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"not a readable Parquet file: {exc}") from exc
    if table.schema.remove_metadata() != SCHEMA:
        raise ValueError("the Parquet file does not have the attestation schema")
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows

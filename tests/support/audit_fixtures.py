"""Usage records with real Ed25519-signed backend claims, for cold-path tests."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.audit.attestations import (
    COLUMNS_V1,
    SCHEMA_V1,
    records_root,
    rows_table,
    to_parquet,
)
from render_gateway.audit.leaves import BatchLeaf, leaf_key
from render_gateway.audit.log import AuditLog
from render_gateway.core.usage_records import UsageRecord, build_record
from render_gateway.signing_keys import key_id
from render_gateway.usage_claim import UsageClaim, sign_claim, sign_window

NODE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # a fixed test node key
NODE_KEYS = {key_id(NODE_KEY.public_key()): NODE_KEY.public_key().public_bytes_raw()}
NODE_PUBLIC_KEY = base64.b64encode(NODE_KEY.public_key().public_bytes_raw()).decode()


def make_claim(
    index: int, gpu_seconds: float = 0.5, key: Ed25519PrivateKey = NODE_KEY
) -> UsageClaim:
    stamp = datetime.fromtimestamp(time.time(), UTC).isoformat()
    return UsageClaim(
        request_id=f"req_test{index:08d}", model="demo", device_uuid="cpu-test", device_kind="cpu",
        gpu_seconds=gpu_seconds, started_at=stamp, ended_at=stamp, seed=index,
        output_blake3=("00" * 32,), status="complete", steps_completed=2,
        key_id=key_id(key.public_key()),
    )  # fmt: skip


def claimed_record(
    index: int, claim_text: str, gpu_seconds: float = 0.5, customer: str = "acme"
) -> UsageRecord:
    """A finished request as the gateway records it, carrying the backend's claim text (checked
    against NODE_KEYS as the gateway checks it when the request settles)."""
    now = time.time()
    return build_record(
        request_id=f"req_test{index:08d}", customer_id=customer, plan="default", tier="async",
        modality="image", family="sd", model="tiny", created_at=now - 1, started_at=now - 0.5,
        ended_at=now, outcome="success", unit_price=0.001, currency="USD", backend="w1",
        parameters={"gpu_seconds": gpu_seconds, "device_uuid": "cpu-test", "device_kind": "cpu",
                    "usage_claim": claim_text},
        node_keys=NODE_KEYS,  # as the gateway checks it when the request settles
    )  # fmt: skip


def signed_record(
    index: int, gpu_seconds: float = 0.5, claimed: float | None = None, customer: str = "acme"
) -> UsageRecord:
    """A finished request with the backend's directly signed claim (``Ed25519``; ``claimed``
    lets a test make the claim disagree with the record)."""
    claim = make_claim(index, gpu_seconds if claimed is None else claimed)
    record = claimed_record(index, sign_claim(claim, NODE_KEY).to_text(), gpu_seconds, customer)
    if claimed is not None:  # a record that says its claim verified although it does not
        record = replace(record, node_public_key=NODE_PUBLIC_KEY, claim_error=None)
    return record


def append_v1(audit_log: AuditLog, rows: list[dict[str, Any]]) -> BatchLeaf:
    """What the log appended before version 2: canonical JSON rows of the version-1 columns."""
    rows = [{name: row[name] for name in COLUMNS_V1} for row in rows]
    digest = audit_log.cas.put(to_parquet(rows_table(rows, SCHEMA_V1)))
    ended = [row["ended_at_us"] for row in rows]
    leaf = BatchLeaf(
        index=audit_log.size, batch_blake3=digest, records_root=records_root(rows).hex(),
        count=len(rows), gpu_seconds=sum(row["gpu_seconds"] for row in rows),
        first_usage_seq=rows[0]["usage_seq"], last_usage_seq=rows[-1]["usage_seq"],
        window_start_us=min(ended), window_end_us=max(ended),
        timestamp_us=(audit_log.leaves[-1].timestamp_us + 1) if audit_log.leaves else 1, version=1,
    )  # fmt: skip
    audit_log.objects.put_new(leaf_key(leaf.index), leaf.encode())
    with audit_log.lock:
        audit_log.leaves.append(leaf)
        audit_log.tree.append(leaf.hash)
        audit_log._sign_checkpoint()
    return leaf


def window_signed_records(
    indices: Sequence[int], window: int, gpu_seconds: float = 0.5, customer: str = "acme"
) -> list[UsageRecord]:
    """Finished requests whose claims the backend signed in windows of ``window`` consecutive
    claims (``Ed25519-window``; the last window may be smaller)."""
    records: list[UsageRecord] = []
    for start in range(0, len(indices), window):
        chunk = indices[start : start + window]
        signed = sign_window([make_claim(i, gpu_seconds) for i in chunk], NODE_KEY)
        records += [
            claimed_record(i, s.to_text(), gpu_seconds, customer)
            for i, s in zip(chunk, signed, strict=True)
        ]
    return records

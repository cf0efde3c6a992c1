"""A real audit store for the verify tests: records batched by the real batcher into a real
log in a local directory, and the real `audit verify` CLI run against it."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from render_gateway.audit.attestations import (
    from_parquet,
    rows_table,
    table_records_root,
    to_parquet,
)
from render_gateway.audit.batcher import AttestationBatcher
from render_gateway.audit.cas import ContentStore
from render_gateway.audit.keys import load_signer, public_key_line
from render_gateway.audit.leaves import BatchLeaf, checkpoint_key, leaf_key
from render_gateway.audit.log import open_audit_log
from render_gateway.audit.merkle import MerkleLog
from render_gateway.audit.signed_note import Checkpoint, sign_note
from render_gateway.core.usage_records import UsageRecord
from render_gateway.stores.objects import open_object_store
from render_gateway.stores.sqlite_jobs import SqliteJobStore

from support.audit_fixtures import signed_record
from support.processes import CLI

ORIGIN = "render-gateway/test"


async def build_log(data: Path, bad_claim_at: int | None = None) -> None:
    """Four batches of 5 records (the last one sealed on demand: 4 records)."""
    records = (
        signed_record(index, claimed=0.25 if index == bad_claim_at else None) for index in range(19)
    )
    await build_log_of(data, records, batch_records=5)


async def build_log_of(data: Path, records: Iterable[UsageRecord], batch_records: int) -> None:
    """``records`` appended to a usage log and sealed into the log at ``data``/cas; the log's
    verifier key in ``data``/pubkey.txt."""
    jobs = SqliteJobStore(data / "jobs.db")
    await jobs.open()
    objects = open_object_store((data / "cas").as_uri())
    signer = load_signer(data, ORIGIN)
    open_log = functools.partial(open_audit_log, objects, signer, ORIGIN)
    batcher = AttestationBatcher(jobs.usage_log, open_log, batch_records, 3600)
    batcher.start()
    for record in records:
        await jobs.usage_log.append_usage(record)
    assert await asyncio.to_thread(batcher.seal, 20.0)
    await asyncio.to_thread(batcher.stop, 0)
    jobs.usage_log.close_thread_connection()
    await jobs.close()
    (data / "pubkey.txt").write_text(public_key_line(signer) + "\n")


def verify(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "audit", "verify", "--cas", (data / "cas").as_uri(), "--pubkey",
         str(data / "pubkey.txt"), "--origin", ORIGIN, "--data-dir", str(data), *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def batch_rows(data: Path, index: int) -> tuple[BatchLeaf, list[dict[str, Any]]]:
    objects = open_object_store((data / "cas").as_uri())
    leaf = BatchLeaf.decode(objects.get(leaf_key(index)))
    return leaf, from_parquet(ContentStore(objects).get(leaf.batch_blake3), leaf.version)


def restore_batch(data: Path, leaf: BatchLeaf, rows: list[dict[str, Any]]) -> BatchLeaf:
    """Store edited rows under their new hash and point the leaf at them (what someone with
    write access to the bucket, but not the log key, can do)."""
    objects = open_object_store((data / "cas").as_uri())
    digest = ContentStore(objects).put(to_parquet(rows))
    edited = dataclasses.replace(
        leaf, batch_blake3=digest, records_root=table_records_root(rows_table(rows)).hex(),
        gpu_seconds=sum(float(row["gpu_seconds"]) for row in rows),
    )  # fmt: skip
    (data / "cas" / leaf_key(leaf.index)).write_bytes(edited.encode())
    return edited


def resign_checkpoints(data: Path) -> None:
    """Sign every checkpoint again over the stored leaves, with the log key (an insider)."""
    objects = open_object_store((data / "cas").as_uri())
    signer = load_signer(data, ORIGIN)
    leaves = [BatchLeaf.decode(objects.get(leaf_key(i))) for i in range(4)]
    tree = MerkleLog(leaf.hash for leaf in leaves)
    for size in range(1, 5):
        text = Checkpoint(ORIGIN, size, tree.root_at(size)).to_text()
        (data / "cas" / checkpoint_key(size)).write_bytes(sign_note(text, [signer]))

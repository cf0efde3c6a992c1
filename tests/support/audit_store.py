"""A real audit store for the verify tests: records batched by the real batcher into a real
log in a local directory, and the real `audit verify` CLI run against it."""

from __future__ import annotations

import asyncio
import functools
import subprocess
from collections.abc import Iterable
from pathlib import Path

from render_gateway.audit.batcher import AttestationBatcher
from render_gateway.audit.keys import load_signer, public_key_line
from render_gateway.audit.log import open_audit_log
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

"""Every reconciliation run is recorded twice: a row in ClickHouse (``reconciliation_runs``,
for dashboards) and a signed entry in the audit store, each naming the hash of the one before,
so the history of checks is itself tamper-evident and verifiable offline (the chain itself:
audit/run_chain.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa

from render_gateway.audit.reconcile import Reconciliation
from render_gateway.audit.run_chain import append_entry
from render_gateway.audit.signed_note import NoteSigner
from render_gateway.metering.store import UsageStore
from render_gateway.stores.objects import ObjectStore

_RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("window_start", pa.timestamp("us", tz="UTC")),
        ("window_end", pa.timestamp("us", tz="UTC")),
        ("status", pa.string()),
        ("error", pa.string()),
        ("discrepant_keys", pa.uint32()),
        ("missing_in_hot", pa.uint64()),
        ("missing_in_cold", pa.uint64()),
        ("duplicated_in_hot", pa.uint64()),
        ("gpu_mismatches", pa.uint64()),
        ("repaired", pa.uint64()),
        ("report", pa.string()),
    ]
)


def summary(run: Reconciliation, started_at: datetime) -> dict[str, Any]:
    """What the signed entry commits to (the full report is in ClickHouse)."""
    return {
        "run_id": run.run_id,
        "started_at": started_at.isoformat(),
        "window_start": run.window_start.isoformat(),
        "window_end": run.window_end.isoformat(),
        "status": run.status,
        "error": run.error,
        "hot_requests": run.hot_requests,
        "cold_requests": run.cold_requests,
        "hot_gpu_seconds": run.hot_gpu_seconds,
        "cold_gpu_seconds": run.cold_gpu_seconds,
        "discrepant_keys": len(run.keys),
        "counts": run.counts,
        "unreadable_batches": len(run.unreadable_batches),
        "repaired": run.repaired,
    }


def record_run(
    run: Reconciliation,
    started_at: datetime,
    usage: UsageStore | None,
    objects: ObjectStore,
    signer: NoteSigner,
) -> None:
    """Sign and store the entry (always), and the ClickHouse row (when the store answers)."""
    append_entry(objects, signer, summary(run, started_at))
    if usage is not None:
        counts = run.counts
        row = {
            "run_id": run.run_id, "started_at": started_at, "window_start": run.window_start,
            "window_end": run.window_end, "status": run.status, "error": run.error,
            "discrepant_keys": len(run.keys), "missing_in_hot": counts.get("missing_in_hot", 0),
            "missing_in_cold": counts.get("missing_in_cold", 0),
            "duplicated_in_hot": counts.get("duplicated_in_hot", 0),
            "gpu_mismatches": counts.get("gpu_mismatches", 0), "repaired": run.repaired,
            "report": orjson.dumps(run.to_json()).decode(),
        }  # fmt: skip
        usage.append("reconciliation_runs", pa.Table.from_pylist([row], schema=_RUNS_SCHEMA))


def recent_runs(usage: UsageStore, limit: int) -> list[dict[str, Any]]:
    rows = usage.rows(
        "SELECT report, toUnixTimestamp64Micro(started_at) FROM reconciliation_runs "
        "ORDER BY started_at DESC LIMIT {limit:UInt32}",
        {"limit": limit},
    )
    return [
        {**orjson.loads(report), "started_at": datetime.fromtimestamp(us / 1e6, UTC).isoformat()}
        for report, us in rows
    ]

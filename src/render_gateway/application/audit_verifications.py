"""The gateway verifying its own audit log on request: the check ``render-gateway audit verify``
makes offline, run over the gateway's audit store in a thread and recorded there.

What it trusts is what the CLI trusts without flags: the log's own key (and the rotations the
store holds signed by it), the node keys the log recorded (trust on first use), every claim
checked. Two things differ, both because the log is live: it verifies the log as of its latest
checkpoint at the start (audit/log_snapshot.py: an append under way is not tampering), and it
holds the store to the checkpoint this process signed last, so a store rolled back or truncated
under a running gateway fails. A log with nothing in it yet verifies (a new gateway is not a
broken one).

One run at a time per process: a second request while one runs is refused (``Busy``), not
queued behind it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from render_gateway.audit.keys import trusted_verifiers
from render_gateway.audit.log import AuditLog
from render_gateway.audit.log_snapshot import LogAsOf, latest_checkpoint_size
from render_gateway.audit.signed_note import NoteSigner
from render_gateway.audit.verification_runs import record_verification
from render_gateway.audit.verify import Finding, Report, verify_log
from render_gateway.stores.objects import ObjectStore, ObjectStoreError

log = logging.getLogger(__name__)

# A run's findings as recorded and answered; the count says how many there were in all.
MAX_FINDINGS = 200


class Busy(Exception):
    """A verification is already running in this process."""


class AuditVerifications:
    def __init__(self) -> None:
        self._running = asyncio.Lock()

    async def run(
        self, objects: ObjectStore, signer: NoteSigner, origin: str, audit_log: AuditLog
    ) -> dict[str, Any]:
        """Verify, record, and return the run. ObjectStoreError when the store cannot be read
        or the run cannot be recorded (nothing recorded then)."""
        if self._running.locked():
            raise Busy("a verification is already running on this replica")
        async with self._running:
            return await asyncio.to_thread(verify_and_record, objects, signer, origin, audit_log)


def verify_and_record(
    objects: ObjectStore, signer: NoteSigner, origin: str, audit_log: AuditLog
) -> dict[str, Any]:
    """Blocking: one verification, recorded in ``objects``."""
    started_at = datetime.now(UTC)
    began = time.monotonic()
    with audit_log.lock:  # the checkpoint together with the tree it signs
        signed = audit_log.checkpoint
    size = max(latest_checkpoint_size(objects), signed.size if signed else 0)
    view = LogAsOf(objects, size)
    try:
        verifiers = trusted_verifiers(view, [signer.verifier()])
        # In this process (workers=1): a worker would open the store by its URL, around the
        # view's size limit, and a gateway should not spawn processes per request.
        report = verify_log(view, verifiers, origin, signed, allow_empty=True, workers=1)
    except ObjectStoreError:
        raise
    except Exception as exc:  # stored bytes the verifier cannot take are a finding, not a 500
        log.exception("audit verification could not complete")
        report = Report()
        report.fail("verification", f"could not complete: {type(exc).__name__}: {exc}")
    run = run_json(report, secrets.token_hex(8), started_at, size)
    run["duration_seconds"] = round(time.monotonic() - began, 3)
    record_verification(objects, started_at, run)
    return run


def run_json(report: Report, run_id: str, started_at: datetime, size: int) -> dict[str, Any]:
    return {
        "id": f"ver_{run_id}",
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "ok": report.ok,
        "records": report.records,
        "batches": report.leaves,
        "gpu_seconds": report.gpu_seconds,
        "checkpoints": report.checkpoints,
        "log_size": size,
        "records_without_claim": report.unclaimed,
        "records_with_unverified_claim": len(report.unverified),
        "node_keys": len(report.node_keys),
        "reconciliations": report.reconciliations,
        "findings": [finding_json(f) for f in report.findings[:MAX_FINDINGS]],
        "findings_total": len(report.findings),
    }


def finding_json(finding: Finding) -> dict[str, str]:
    return {"where": finding.where, "what": finding.what}

"""The gateway's own verification (application/audit_verifications.py) on a real audit store:
a clean log verifies and the run is recorded where the offline verifier never looks; a leaf
stored before its checkpoint (an append under way) is not a finding; a store rolled back under
the process that signed it fails against the checkpoint that process holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

from render_gateway.application.audit_verifications import AuditVerifications, Busy
from render_gateway.audit.keys import load_signer
from render_gateway.audit.leaves import BatchLeaf, checkpoint_key, leaf_key
from render_gateway.audit.log import AuditLog, open_audit_log
from render_gateway.audit.verification_runs import VERIFICATIONS_PREFIX, recent_verifications
from render_gateway.stores.objects import ObjectStore, open_object_store

from support.audit_store import ORIGIN, verify


def opened(data: Path) -> tuple[ObjectStore, AuditLog]:
    objects = open_object_store((data / "cas").as_uri())
    return objects, open_audit_log(objects, load_signer(data, ORIGIN), ORIGIN)


def run(data: Path, objects: ObjectStore, audit_log: AuditLog) -> dict[str, object]:
    return asyncio.run(
        AuditVerifications().run(objects, load_signer(data, ORIGIN), ORIGIN, audit_log)
    )


def test_a_clean_log_verifies_and_the_run_is_recorded_apart(data: Path) -> None:
    objects, audit_log = opened(data)
    first = run(data, objects, audit_log)
    assert first["ok"] is True and first["findings"] == [] and first["findings_total"] == 0
    assert (first["batches"], first["records"], first["log_size"]) == (4, 19, 4)
    second = run(data, objects, audit_log)
    assert recent_verifications(objects, 10) == [second, first]
    assert recent_verifications(objects, 1) == [second]
    assert len(objects.list(VERIFICATIONS_PREFIX)) == 2
    # What was recorded changes nothing the offline verifier reads.
    offline = verify(data)
    assert offline.returncode == 0, offline.stdout + offline.stderr


def test_a_leaf_stored_before_its_checkpoint_is_an_append_under_way(data: Path) -> None:
    objects, audit_log = opened(data)
    last = audit_log.leaves[-1]
    # The next leaf, as an append writes it before the checkpoint that covers it.
    following = BatchLeaf(
        index=4, batch_blake3=last.batch_blake3, records_root=last.records_root,
        count=last.count, gpu_seconds=last.gpu_seconds,
        first_usage_seq=last.last_usage_seq + 1,
        last_usage_seq=last.last_usage_seq + last.count, window_start_us=last.window_start_us,
        window_end_us=last.window_end_us, timestamp_us=last.timestamp_us + 1,
    )  # fmt: skip
    objects.put_new(leaf_key(4), following.encode())
    assert verify(data).returncode == 1  # offline, the uncovered leaf is a finding
    result = run(data, objects, audit_log)
    assert result["ok"] is True, result["findings"]
    assert result["batches"] == result["log_size"] == 4


def test_a_store_rolled_back_under_the_gateway_fails(data: Path) -> None:
    objects, audit_log = opened(data)
    assert audit_log.checkpoint is not None and audit_log.checkpoint.size == 4
    cas = data / "cas"
    (cas / leaf_key(3)).unlink()
    (cas / checkpoint_key(4)).unlink()
    assert verify(data).returncode == 0  # offline, a shorter log is still a consistent one
    result = run(data, objects, audit_log)
    assert result["ok"] is False
    assert {"where": "trusted checkpoint",
            "what": "has 4 leaves, the log only 3: rolled back or truncated"} in result["findings"]  # type: ignore[operator]  # fmt: skip


def test_one_run_at_a_time(data: Path) -> None:
    objects, audit_log = opened(data)
    verifications = AuditVerifications()
    signer = load_signer(data, ORIGIN)

    async def two_at_once() -> list[object]:
        return await asyncio.gather(
            verifications.run(objects, signer, ORIGIN, audit_log),
            verifications.run(objects, signer, ORIGIN, audit_log),
            return_exceptions=True,
        )

    first, second = asyncio.run(two_at_once())
    assert isinstance(first, dict) and first["ok"] is True
    assert isinstance(second, Busy) and "already running" in str(second)

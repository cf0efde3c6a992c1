"""The cold path end to end on real stores: the usage log (SQLite) → attestation batches
(Parquet, zstd) in a content-addressed store → RFC 6962 log → signed checkpoints; offline
verification, inclusion proofs, exactly-once batching across a kill -9."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.audit import batcher as batcher_module
from render_gateway.audit.attestations import from_parquet
from render_gateway.audit.batcher import CONSUMER, AttestationBatcher
from render_gateway.audit.cas import ContentStore
from render_gateway.audit.keys import load_signer, public_key_line, rotate, trusted_verifiers
from render_gateway.audit.leaves import LEAVES_PREFIX, BatchLeaf
from render_gateway.audit.log import AuditLog, open_audit_log
from render_gateway.audit.proofs import BundleError, ProofNotFound, bundle_from_store, verify_bundle
from render_gateway.audit.signed_note import NoteSigner, parse_verifier_key
from render_gateway.audit.verify import verify_log
from render_gateway.stores.objects import ObjectStore, open_object_store
from render_gateway.stores.sqlite_jobs import SqliteJobStore

from support.audit_fixtures import signed_record
from support.moto import BUCKET, REGION, S3_CREDENTIALS, Moto
from support.processes import CLI, STARTED

ORIGIN = "render-gateway/test"
DRIVER = Path(__file__).resolve().parents[1] / "support" / "audit_driver.py"


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    store = SqliteJobStore(tmp_path / "jobs.db")
    await store.open()
    yield store
    store.usage_log.close_thread_connection()
    await store.close()


def log_opener(objects: ObjectStore, signer: NoteSigner) -> Callable[[], AuditLog]:
    return functools.partial(open_audit_log, objects, signer, ORIGIN)


async def append(jobs: SqliteJobStore, indexes: range, **changes: float) -> list[str]:
    records = [signed_record(i, **changes) for i in indexes]
    for record in records:  # one at a time: the usage log's order is the records' order
        await jobs.usage_log.append_usage(record)
    return [r.request_id for r in records]


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def all_rows(objects: ObjectStore) -> list[dict[str, object]]:
    cas = ContentStore(objects)
    rows: list[dict[str, object]] = []
    for key in objects.list(LEAVES_PREFIX):
        leaf = BatchLeaf.decode(objects.get(key))
        rows += from_parquet(cas.get(leaf.batch_blake3), leaf.version)
    return rows


async def test_batches_seal_by_count_then_on_demand_and_verify(
    jobs: SqliteJobStore, tmp_path: Path
) -> None:
    objects = open_object_store((tmp_path / "cas").as_uri())
    signer = load_signer(tmp_path, ORIGIN)
    batcher = AttestationBatcher(jobs.usage_log, log_opener(objects, signer), 10, 3600)
    batcher.start()
    try:
        await append(jobs, range(25))
        batcher.notify()
        await until(lambda: batcher.stats.batches == 2)  # two full batches; 5 records wait
        await asyncio.sleep(0.2)
        assert batcher.stats.batches == 2 and batcher.stats.backlog == 5
        assert await asyncio.to_thread(batcher.seal, 10.0)
    finally:
        await asyncio.to_thread(batcher.stop, 5.0)
    report = verify_log(objects, [signer.verifier()], ORIGIN)
    assert report.ok, report.findings
    assert (report.leaves, report.records, report.checkpoints) == (3, 25, 3)
    assert report.gpu_seconds == pytest.approx(12.5)
    assert report.unclaimed == 0
    assert [row["usage_seq"] for row in all_rows(objects)] == list(range(1, 26))


def spy_on_builds(monkeypatch: pytest.MonkeyPatch, fail_on_call: int | None = None) -> list[str]:
    """The batcher's real table builder, recording the thread each build ran on; the
    ``fail_on_call``-th build raises instead (once)."""
    real = batcher_module.attestations_table
    threads: list[str] = []

    def build(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        if len(threads) == fail_on_call:
            raise RuntimeError("a build failed")
        return real(*args)

    monkeypatch.setattr(batcher_module, "attestations_table", build)
    return threads


async def seal_what_waits(
    jobs: SqliteJobStore, tmp_path: Path
) -> tuple[ObjectStore, NoteSigner, AttestationBatcher]:
    """Start a batcher of 10-record batches on what the usage log holds, seal it all, stop."""
    objects = open_object_store((tmp_path / "cas").as_uri())
    signer = load_signer(tmp_path, ORIGIN)
    batcher = AttestationBatcher(jobs.usage_log, log_opener(objects, signer), 10, 3600)
    batcher.start()
    try:
        assert await asyncio.to_thread(batcher.seal, 20.0)
    finally:
        await asyncio.to_thread(batcher.stop, 0)
    return objects, signer, batcher


async def test_a_backlog_is_sealed_in_order_the_next_batch_built_while_the_last_is_appended(
    jobs: SqliteJobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = spy_on_builds(monkeypatch)
    await append(jobs, range(55))  # 5.5 batches waiting before the batcher starts
    objects, signer, _ = await seal_what_waits(jobs, tmp_path)
    assert [row["usage_seq"] for row in all_rows(objects)] == list(range(1, 56))
    report = verify_log(objects, [signer.verifier()], ORIGIN)
    assert report.ok, report.findings
    assert (report.leaves, report.records) == (6, 55)
    # Read two at a time while two batches wait: those are built on the builder thread; the
    # last full batch (15 waiting) and the sealed rest of 5 one at a time on the batcher's.
    assert len(threads) == 6, threads
    assert all(name.startswith("audit-build") for name in threads[:4]), threads
    assert threads[4:] == ["audit-batcher", "audit-batcher"], threads


async def test_a_build_failing_in_a_read_ahead_loses_and_repeats_nothing(
    jobs: SqliteJobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = spy_on_builds(monkeypatch, fail_on_call=2)  # the second batch of the first pair
    await append(jobs, range(40))
    objects, signer, batcher = await seal_what_waits(jobs, tmp_path)
    assert batcher.stats.errors == 1 and batcher.stats.last_error == "a build failed"
    # The first batch was in the log and acked before the failure; the second was read again.
    assert [row["usage_seq"] for row in all_rows(objects)] == list(range(1, 41))
    assert verify_log(objects, [signer.verifier()], ORIGIN).ok
    assert len(threads) == 5, threads  # 4 batches, one built twice


async def test_a_batch_is_sealed_when_its_oldest_record_is_old_enough(
    jobs: SqliteJobStore, tmp_path: Path
) -> None:
    objects = open_object_store((tmp_path / "cas").as_uri())
    signer = load_signer(tmp_path, ORIGIN)
    batcher = AttestationBatcher(jobs.usage_log, log_opener(objects, signer), 1000, 0.3)
    batcher.start()
    try:
        await append(jobs, range(4))
        batcher.notify()
        await until(lambda: batcher.stats.batches == 1, within=10)
        assert batcher.stats.attested == 4
    finally:
        await asyncio.to_thread(batcher.stop, 5.0)


class CountingStream:
    """The usage stream, counting the batcher's reads of records."""

    def __init__(self, stream: Any) -> None:
        self._stream, self.reads = stream, 0

    def read_group(self, group: str, count: int) -> Any:
        self.reads += 1
        return self._stream.read_group(group, count)

    def read_group_raw(self, group: str, count: int) -> Any:
        self.reads += 1
        return self._stream.read_group_raw(group, count)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


async def test_appends_cost_the_batcher_no_read_until_a_batch_is_due(
    jobs: SqliteJobStore, tmp_path: Path
) -> None:
    """Records are read only to seal a batch: a notify per append wakes the thread only once
    enough have come to fill one (it used to decode the whole backlog on every append)."""
    objects = open_object_store((tmp_path / "cas").as_uri())
    stream = CountingStream(jobs.usage_log)
    batcher = AttestationBatcher(
        stream, log_opener(objects, load_signer(tmp_path, ORIGIN)), 50, 3600
    )  # type: ignore[arg-type]
    batcher.start()
    try:
        for index in range(49):
            await append(jobs, range(index, index + 1))
            batcher.notify()
        await asyncio.sleep(0.3)
        assert stream.reads == 0 and batcher.stats.batches == 0
        assert batcher.stats.backlog in range(0, 50)  # counted without reading the records
        await append(jobs, range(49, 50))
        batcher.notify()
        await until(lambda: batcher.stats.batches == 1, within=0.9)  # the count woke it
        assert stream.reads == 1 and batcher.stats.attested == 50
    finally:
        await asyncio.to_thread(batcher.stop, 0)


async def test_a_lost_cursor_never_batches_a_record_twice(
    jobs: SqliteJobStore, tmp_path: Path
) -> None:
    objects = open_object_store((tmp_path / "cas").as_uri())
    signer = load_signer(tmp_path, ORIGIN)
    first = AttestationBatcher(jobs.usage_log, log_opener(objects, signer), 5, 60)
    first.start()
    await append(jobs, range(12))
    assert await asyncio.to_thread(first.seal, 10.0)
    await asyncio.to_thread(first.stop, 0)
    # A kill -9 between a leaf and the cursor's commit leaves exactly this state behind.
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        conn.execute("UPDATE usage_cursors SET seq = 0 WHERE consumer = ?", (CONSUMER,))
    second = AttestationBatcher(jobs.usage_log, log_opener(objects, signer), 5, 60)
    second.start()
    await append(jobs, range(12, 15))
    assert await asyncio.to_thread(second.seal, 10.0)
    await asyncio.to_thread(second.stop, 0)
    assert [row["usage_seq"] for row in all_rows(objects)] == list(range(1, 16))
    assert verify_log(objects, [signer.verifier()], ORIGIN).ok


def run_driver(tmp_path: Path, *args: str, kill_after: float | None = None) -> None:
    """Run the audit driver on ``tmp_path`` with ``args``: killed with SIGKILL ``kill_after``
    seconds after it says it is running, or (None) to its clean end."""
    # The driver runs the code under test (a PYTHONPATH of the test run's own comes first).
    paths = [str(DRIVER.parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, str(DRIVER), str(tmp_path), *args]
    if kill_after is None:
        final = subprocess.run(command, capture_output=True, env=env, timeout=120)
        assert final.stdout.endswith(b"done\n"), final.stderr.decode()
        return
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
    STARTED.append(process)
    assert process.stdout is not None and process.stdout.readline() == b"running\n"
    time.sleep(kill_after)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


def assert_attested_once(tmp_path: Path, written: int) -> None:
    """Every record of the usage log in the audit log exactly once, in order, and it verifies."""
    objects = open_object_store((tmp_path / "cas").as_uri())
    seqs = [row["usage_seq"] for row in all_rows(objects)]
    assert seqs == list(range(1, written + 1))
    report = verify_log(objects, [load_signer(tmp_path, ORIGIN).verifier()], ORIGIN)
    assert report.ok, report.findings


async def test_a_kill_9_during_batching_then_a_restart_attests_everything_once(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    for start in range(0, 1600, 400):
        run_driver(tmp_path, str(start), "400", kill_after=rng.uniform(0.05, 0.6))
    run_driver(tmp_path, "1600", "3")
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        (written,) = conn.execute("SELECT COUNT(*) FROM usage_log").fetchone()
    assert_attested_once(tmp_path, written)  # every record the log holds, exactly once


async def test_a_kill_9_while_a_backlog_is_read_ahead_then_a_restart_attests_everything_once(
    tmp_path: Path,
) -> None:
    rng = random.Random(11)
    # 300 records waiting, batches of 7: every read is two batches, built side by side.
    for count in (300, 0, 0, 0):
        run_driver(tmp_path, "0", str(count), "backlog", kill_after=rng.uniform(0.1, 0.5))
    run_driver(tmp_path, "300", "3")
    assert_attested_once(tmp_path, 303)


async def test_inclusion_proof_bundles_verify_offline(jobs: SqliteJobStore, tmp_path: Path) -> None:
    objects = open_object_store((tmp_path / "cas").as_uri())
    signer = load_signer(tmp_path, ORIGIN)
    batcher = AttestationBatcher(jobs.usage_log, log_opener(objects, signer), 4, 60)
    batcher.start()
    ids = await append(jobs, range(11))
    assert await asyncio.to_thread(batcher.seal, 10.0)
    await asyncio.to_thread(batcher.stop, 0)
    verifiers = [signer.verifier()]
    key_line = public_key_line(signer)
    for request_id in (ids[0], ids[5], ids[10]):
        bundle = bundle_from_store(objects, verifiers, key_line, request_id, "acme")
        row, checkpoint = verify_bundle(bundle, [parse_verifier_key(key_line)])
        assert row["request_id"] == request_id and checkpoint.size == 3
    bundle = bundle_from_store(objects, verifiers, key_line, ids[5])
    with pytest.raises(ProofNotFound):
        bundle_from_store(objects, verifiers, key_line, ids[5], "someone-else")
    with pytest.raises(ProofNotFound):
        bundle_from_store(objects, verifiers, key_line, "req_unknown")
    forged = dict(bundle, row=bundle["row"].replace('"gpu_seconds":0.5', '"gpu_seconds":0.1'))
    with pytest.raises(BundleError):
        verify_bundle(forged, verifiers)
    other = NoteSigner(ORIGIN, load_signer(tmp_path / "other", ORIGIN).private_key)
    with pytest.raises(BundleError):
        verify_bundle(bundle, [other.verifier()])
    moved = dict(bundle, row_index=bundle["row_index"] + 1)
    with pytest.raises(BundleError):
        verify_bundle(moved, verifiers)


async def test_a_log_on_s3_verifies_offline_through_the_cli(
    jobs: SqliteJobStore, tmp_path: Path, moto: Moto
) -> None:
    """No real S3 runs on this machine; moto's S3 server on 127.0.0.1 stands in for it."""
    url = f"s3://{BUCKET}/audit-{uuid.uuid4().hex}"
    options: dict[str, str | bool] = {"endpoint": moto.endpoint, "region": REGION,
                                      "allow_http": True, **S3_CREDENTIALS}  # fmt: skip
    objects = open_object_store(url, **options)
    signer = load_signer(tmp_path, ORIGIN)
    batcher = AttestationBatcher(jobs.usage_log, log_opener(objects, signer), 4, 60)
    batcher.start()
    await append(jobs, range(10))
    assert await asyncio.to_thread(batcher.seal, 20.0)
    await asyncio.to_thread(batcher.stop, 0)
    pubkey = tmp_path / "pubkey.txt"
    pubkey.write_text(public_key_line(signer) + "\n")
    env = {**os.environ, "AWS_ENDPOINT": moto.endpoint, "AWS_ALLOW_HTTP": "true",
           "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": S3_CREDENTIALS["access_key_id"],
           "AWS_SECRET_ACCESS_KEY": S3_CREDENTIALS["secret_access_key"]}  # fmt: skip
    command = [*CLI, "audit", "verify", "--cas", url, "--pubkey", str(pubkey), "--origin",
               ORIGIN, "--data-dir", str(tmp_path / "elsewhere")]  # fmt: skip
    clean = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "verified: 3 batches, 10 records" in clean.stdout
    leaf = BatchLeaf.decode(objects.get("log/leaves/00000000000000000001"))
    key = ContentStore(objects).key_of(leaf.batch_blake3)
    prefix = url.removeprefix(f"s3://{BUCKET}/")
    moto.client.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=b"not the batch")
    tampered = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert tampered.returncode == 1 and "FAIL leaf 1" in tampered.stdout


async def test_a_rotated_key_is_followed_from_either_end(
    jobs: SqliteJobStore, tmp_path: Path
) -> None:
    objects = open_object_store((tmp_path / "cas").as_uri())

    async def batch(indexes: range) -> None:
        signer = load_signer(tmp_path, ORIGIN)  # as a restarted gateway loads it
        batcher = AttestationBatcher(jobs.usage_log, log_opener(objects, signer), 5, 60)
        batcher.start()
        await append(jobs, indexes)
        assert await asyncio.to_thread(batcher.seal, 10.0)
        await asyncio.to_thread(batcher.stop, 0)

    await batch(range(10))
    old = load_signer(tmp_path, ORIGIN).verifier()
    old_line, new_line = rotate(tmp_path, ORIGIN, objects)
    assert parse_verifier_key(old_line) == old
    assert (tmp_path / "audit" / "log.key").stat().st_mode & 0o777 == 0o600
    new = load_signer(tmp_path, ORIGIN).verifier()
    assert new != old and parse_verifier_key(new_line) == new
    await batch(range(10, 20))  # the log reopens under the new key and goes on
    for trusted in ([old], [new]):
        keys = trusted_verifiers(objects, trusted)
        report = verify_log(objects, keys, ORIGIN)
        assert report.ok, report.findings
        assert report.leaves == 4 and report.records == 20
    stranger = NoteSigner(ORIGIN, Ed25519PrivateKey.generate()).verifier()
    assert trusted_verifiers(objects, [stranger]) == [stranger]
    assert not verify_log(objects, [stranger], ORIGIN).ok

"""Proof lookups (``GET /audit/proofs/{id}``) over a log of many batches: the scan the route
used to do against the proof index it does now, side by side in one run.

Setup (untimed): ``--batches`` batches of ``--batch-records`` records with real signed claims,
sealed by the real ``AttestationBatcher`` into a local CAS.

(1) Scan (before): ``bundle_from_store`` — list and read every leaf, then read batches newest
    first until the id turns up; an unknown id reads every batch.
(2) Index (now): ``ProofIndex.catch_up`` once (what a start does for leaves it has not indexed),
    then ``bundle_from_log`` on the open log: one primary-key lookup and one batch read; an
    unknown id is the lookup alone. Also 40 unknown ids from 40 threads at once.

    python bench/audit_proofs.py [--batches 10000] [--batch-records 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from render_gateway.audit.batcher import AttestationBatcher
from render_gateway.audit.keys import load_signer, public_key_line
from render_gateway.audit.log import open_audit_log
from render_gateway.audit.proof_index import ProofIndex
from render_gateway.audit.proofs import ProofNotFound, bundle_from_log, bundle_from_store
from render_gateway.stores.objects import open_object_store
from render_gateway.stores.sqlite_jobs import SqliteJobStore

from support.audit_fixtures import signed_record

ORIGIN = "render-gateway/bench"


async def build(data: Path, batches: int, batch_records: int) -> None:
    jobs = SqliteJobStore(data / "jobs.db", synchronous="NORMAL")
    await jobs.open()
    records = batches * batch_records
    for start in range(0, records, 500):
        chunk = [signed_record(i) for i in range(start, min(records, start + 500))]
        await asyncio.gather(*(jobs.usage_log.append_usage(r) for r in chunk))
    objects = open_object_store((data / "cas").as_uri())
    open_log = functools.partial(open_audit_log, objects, load_signer(data, ORIGIN), ORIGIN)
    batcher = AttestationBatcher(jobs.usage_log, open_log, batch_records, 3600)
    batcher.start()
    assert await asyncio.to_thread(batcher.seal, 3600.0)
    await asyncio.to_thread(batcher.stop, 0)
    jobs.usage_log.close_thread_connection()
    await jobs.close()


def timed(call: Callable[[], object], runs: int) -> float:
    """Median seconds of ``runs`` calls."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        with contextlib.suppress(ProofNotFound):  # an unknown id ends this way
            call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--batch-records", type=int, default=5)
    parser.add_argument("--scan-runs", type=int, default=3)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {args.batches} batches")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        started = time.perf_counter()
        asyncio.run(build(data, args.batches, args.batch_records))
        print(f"setup: {time.perf_counter() - started:.1f} s")
        objects = open_object_store((data / "cas").as_uri())
        signer = load_signer(data, ORIGIN)
        verifiers, line = [signer.verifier()], public_key_line(signer)
        oldest, unknown = "req_test00000000", "req_unknown"

        def scan(request_id: str) -> Callable[[], object]:
            return lambda: bundle_from_store(objects, verifiers, line, request_id, "acme")

        scan_known = timed(scan(oldest), args.scan_runs)
        scan_unknown = timed(scan(unknown), args.scan_runs)

        audit_log = open_audit_log(objects, signer, ORIGIN)
        index = ProofIndex(data / "proof_index.db")
        started = time.perf_counter()
        index.catch_up(audit_log)
        catch_up = time.perf_counter() - started

        def indexed(request_id: str) -> Callable[[], object]:
            return lambda: bundle_from_log(audit_log, index, line, request_id, "acme")

        index_known = timed(indexed(oldest), 200)
        index_unknown = timed(lambda: index.find(unknown), 2000)
        with ThreadPoolExecutor(40) as pool:
            started = time.perf_counter()
            list(pool.map(lambda n: index.find(f"req_unknown{n}"), range(40)))
            forty = time.perf_counter() - started

    print(f"scan  (before): known id {scan_known * 1000:9.1f} ms   unknown id "
          f"{scan_unknown * 1000:9.1f} ms")  # fmt: skip
    print(f"index (now):    known id {index_known * 1000:9.3f} ms   unknown id "
          f"{index_unknown * 1000:9.3f} ms   40 unknown at once {forty * 1000:.1f} ms")  # fmt: skip
    print(f"index catch-up over {args.batches} batches (once, at start): {catch_up:.2f} s")
    print(f"speed-up: known {scan_known / index_known:.0f}x, unknown "
          f"{scan_unknown / index_unknown:.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()

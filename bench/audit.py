"""The cold path: attestations written per second end to end, and records verified per second
by offline verification, with the BLAKE3 throughput of the same machine as the floor.

(1) Write: the usage log (a real SqliteJobStore file) is pre-filled with N usage records that
    carry real Ed25519-signed backend claims, one per request (untimed). Then an
    ``AttestationBatcher`` batches all of them — attestation rows, Parquet (zstd), BLAKE3, the
    CAS put, the leaf, the log append and a signed checkpoint per batch — into a local CAS;
    timed from start until everything is sealed. This is the gateway's own path.
(2) Verify: ``verify_log`` over the store, as ``render-gateway audit verify`` runs it:
    re-hash every batch, re-derive every records root, every leaf, the tree and every
    checkpoint; once with every backend claim's Ed25519 signature checked (the default) and
    with ``--skip-claims``, each in this process alone and with a worker process per core
    (``--workers``; the CLI uses them by default from 200,000 records, 2,000,000 with
    ``--skip-claims``, in a file:// store).
(3) Floor: BLAKE3 over the same batch files' bytes (what verification must at least read and
    hash), and Ed25519 verifications per second (what checking one claim per record costs).

    python bench/audit.py [--records 100000] [--batch-records 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from render_gateway.audit.batcher import AttestationBatcher
from render_gateway.audit.cas import ContentStore
from render_gateway.audit.keys import load_signer
from render_gateway.audit.leaves import LEAVES_PREFIX, BatchLeaf
from render_gateway.audit.log import open_audit_log
from render_gateway.audit.verify import verify_log
from render_gateway.stores.objects import open_object_store
from render_gateway.stores.sqlite_jobs import SqliteJobStore

from support.audit_fixtures import signed_record

ORIGIN = "render-gateway/bench"


async def prefill(data: Path, records: int) -> SqliteJobStore:
    jobs = SqliteJobStore(data / "jobs.db", synchronous="NORMAL")
    await jobs.open()
    chunk = 500
    for start in range(0, records, chunk):
        batch = [signed_record(i) for i in range(start, min(records, start + chunk))]
        await asyncio.gather(*(jobs.usage_log.append_usage(r) for r in batch))
    return jobs


def write(data: Path, jobs: SqliteJobStore, batch_records: int) -> float:
    objects = open_object_store((data / "cas").as_uri())
    signer = load_signer(data, ORIGIN)

    open_log = functools.partial(open_audit_log, objects, signer, ORIGIN)

    batcher = AttestationBatcher(jobs.usage_log, open_log, batch_records, 3600)
    started = time.perf_counter()
    batcher.start()
    assert batcher.seal(600.0), "the batcher did not catch up"
    elapsed = time.perf_counter() - started
    batcher.stop(0)
    return elapsed


def verify(data: Path, check_claims: bool, workers: int) -> tuple[float, int]:
    objects = open_object_store((data / "cas").as_uri())
    verifier = load_signer(data, ORIGIN).verifier()
    started = time.perf_counter()
    report = verify_log(objects, [verifier], ORIGIN, check_claims=check_claims, workers=workers)
    elapsed = time.perf_counter() - started
    assert report.ok, report.findings[:5]
    return elapsed, report.records


def batch_bytes(data: Path) -> list[bytes]:
    objects = open_object_store((data / "cas").as_uri())
    cas = ContentStore(objects)
    return [
        cas.get(BatchLeaf.decode(objects.get(key)).batch_blake3)
        for key in objects.list(LEAVES_PREFIX)
    ]


def blake3_floor(blobs: list[bytes]) -> float:
    """Seconds to BLAKE3 these bytes (best of 3), in one thread."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for blob in blobs:
            blake3.blake3(blob).digest()
        best = min(best, time.perf_counter() - started)
    return best


def ed25519_rate(count: int = 3000) -> float:
    key = Ed25519PrivateKey.generate()
    public, message = key.public_key(), b"x" * 400
    signature = key.sign(message)
    started = time.perf_counter()
    for _ in range(count):
        public.verify(signature, message)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch-records", type=int, default=10_000)
    parser.add_argument(
        "--skip-claims-only", action="store_true",
        help="time verify --skip-claims only (the with-claims runs take ~8 ms per 100 records)",
    )  # fmt: skip
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; "
          f"Python {platform.python_version()}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        started = time.perf_counter()
        jobs = asyncio.run(prefill(data, args.records))
        print(f"usage log pre-filled with {args.records:,} records with signed claims in "
              f"{time.perf_counter() - started:.1f} s (untimed)")  # fmt: skip
        seconds = write(data, jobs, args.batch_records)
        jobs.usage_log.close_thread_connection()
        asyncio.run(jobs.close())
        blobs = batch_bytes(data)
        size = sum(map(len, blobs))
        cores = len(os.sched_getaffinity(0))
        structure_s, records = verify(data, check_claims=False, workers=1)
        claims_s = claims_pool_s = float("nan")
        if not args.skip_claims_only:
            claims_s, _ = verify(data, check_claims=True, workers=1)
            claims_pool_s, _ = verify(data, check_claims=True, workers=cores)
        structure_pool_s, _ = verify(data, check_claims=False, workers=cores)
        floor_s = blake3_floor(blobs)
        verifies = ed25519_rate()
    n = args.records
    assert records == n
    print(f"\n{len(blobs)} batches of {args.batch_records:,}, {size / 1e6:.1f} MB of Parquet "
          f"({size / n:.0f} bytes per record)\n")  # fmt: skip
    print(f"{'':58}{'records/s':>12}{'µs/record':>11}")
    rows = [
        ("write: usage log -> attestations -> CAS -> log + checkpoint", n / seconds),
        ("verify, every backend claim checked, 1 process", n / claims_s),
        (f"verify, every backend claim checked, {cores} processes", n / claims_pool_s),
        ("verify --skip-claims (hashes, roots, leaves), 1 process", n / structure_s),
        (f"verify --skip-claims, {cores} processes", n / structure_pool_s),
        ("floor: BLAKE3 over the same batch bytes", n / floor_s),
        ("floor: Ed25519 verifications per second (one per claim)", verifies),
    ]
    for label, rate in rows:
        if rate != rate:  # not measured (--skip-claims-only)
            continue
        print(f"{label:58}{rate:12,.0f}{1e6 / rate:11.2f}")
    print(f"\nBLAKE3: {size / floor_s / 1e9:.2f} GB/s on one thread")
    best = n / min(structure_s, structure_pool_s)
    print(f"write >= 150,000 records/s: {n / seconds:,.0f} -> "
          f"{'meets' if n / seconds >= 150_000 else 'MISSES'}")  # fmt: skip
    print(f"verify --skip-claims >= 1,000,000 records/s (best of 1 and {cores} processes): "
          f"{best:,.0f} -> {'meets' if best >= 1_000_000 else 'MISSES'}")  # fmt: skip
    if not args.skip_claims_only:
        print(f"verify with claims: {n / min(claims_s, claims_pool_s):,.0f} records/s against "
              f"{verifies * cores:,.0f} Ed25519 verifications/s on {cores} cores")  # fmt: skip


if __name__ == "__main__":
    main()

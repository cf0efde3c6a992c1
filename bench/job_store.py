"""Durable job submissions per second: group commit vs one commit per submission.

Both sides use the same SqliteJobStore on a real file (WAL, synchronous=FULL unless told
otherwise). Ours: 64 concurrent submitters, so submissions share commits. Baseline: one
submitter awaiting each submission, i.e. one commit (and fsync) per job — what a store without
group commit does. Each acknowledged job is on disk in both cases.

    python bench/job_store.py [--jobs 20000] [--synchronous FULL|NORMAL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job
from render_gateway.core.lanes import Lane
from render_gateway.stores.sqlite_jobs import SqliteJobStore

LANES = (Lane.high, Lane.normal, Lane.low)


def make_job(n: int) -> Job:
    request = {"modality": "image", "family": "flux", "model": "schnell", "task": "t2i",
               "prompt": f"a lighthouse number {n}", "seed": n}  # fmt: skip
    return Job(new_job_id(), f"c{n % 50}", LANES[n % 3], request, time.time())


async def run(path: Path, jobs: int, concurrency: int, synchronous: str) -> tuple[float, int]:
    store = SqliteJobStore(path, synchronous=synchronous)
    await store.open()
    counter = iter(range(jobs))

    async def submitter() -> None:
        for n in counter:
            # Limits that never refuse, still checked: their cost is part of every admission.
            await store.submit(make_job(n), max_queued_for_customer=jobs, max_queued_total=jobs)

    start = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    commits = store.commits
    await store.close()
    return jobs / elapsed, commits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--baseline-jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--synchronous", default="FULL")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; synchronous={args.synchronous}")
    with tempfile.TemporaryDirectory(dir=".") as scratch:
        ours, commits = asyncio.run(
            run(Path(scratch) / "group.db", args.jobs, args.concurrency, args.synchronous)
        )
        base, base_commits = asyncio.run(
            run(Path(scratch) / "single.db", args.baseline_jobs, 1, args.synchronous)
        )
    print(f"group commit, {args.concurrency} submitters: {ours:10.0f} jobs/s "
          f"({args.jobs} jobs, {commits} commits)")  # fmt: skip
    print(f"one commit per job (1 submitter):  {base:10.0f} jobs/s "
          f"({args.baseline_jobs} jobs, {base_commits} commits)")  # fmt: skip
    print(f"ratio: {ours / base:.1f}x")


if __name__ == "__main__":
    main()

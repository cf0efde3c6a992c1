"""Cost of ``LaneQueue.position()`` with about 100,000 jobs queued, next to a naive scan.

Fills a LaneQueue with jobs spread over the three lanes (a fixed mix), cancels 10% of them at
random, then times ``position()`` for random queued ids, one call at a time with
``time.perf_counter_ns``. Baseline: the same queue kept as three plain lists (what a naive
queue holds) and a position found by scanning them with ``list.index``, the fastest scan
Python has (it runs in C), and ``ids_in_order().index()`` on the queue itself, each timed on
fewer lookups because each one is O(n). Times include one ``perf_counter_ns`` call's overhead.

    python bench/queue_positions.py [--jobs 100000] [--lookups 10000] [--naive-lookups 200]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

from render_gateway.core.lanes import Lane, LaneQueue

# Most traffic is normal priority; a fixed mix keeps runs comparable.
LANE_WEIGHTS = {Lane.high: 0.2, Lane.normal: 0.5, Lane.low: 0.3}


def naive_position(lanes: list[list[str]], job_id: str) -> int | None:
    ahead = 0
    for ids in lanes:
        try:
            return ahead + ids.index(job_id)
        except ValueError:
            ahead += len(ids)
    return None


def summarise(samples_ns: list[int]) -> tuple[float, float]:
    """Mean and p99 in microseconds."""
    p99 = statistics.quantiles(samples_ns, n=100, method="inclusive")[98]
    return statistics.fmean(samples_ns) / 1000, p99 / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--naive-lookups", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    queue = LaneQueue()
    naive: list[list[str]] = [[] for _ in Lane]
    lanes = rng.choices(list(LANE_WEIGHTS), weights=list(LANE_WEIGHTS.values()), k=args.jobs)
    for number, lane in enumerate(lanes):
        job_id = f"job-{number:06d}"
        queue.push(job_id, lane)
        naive[lane].append(job_id)

    cancelled = set(rng.sample(range(args.jobs), args.jobs // 10))
    for number in cancelled:
        assert queue.remove(f"job-{number:06d}")
    naive = [[j for j in ids if int(j[4:]) not in cancelled] for ids in naive]
    queued = [job_id for ids in naive for job_id in ids]
    assert queue.ids_in_order() == queued

    # Same answers from both before anything is timed.
    for job_id in rng.sample(queued, 50):
        assert queue.position(job_id) == naive_position(naive, job_id)

    clock = time.perf_counter_ns

    def timed(lookup: Callable[[str], object], count: int) -> list[int]:
        samples = []
        for job_id in rng.choices(queued, k=count):
            start = clock()
            lookup(job_id)
            samples.append(clock() - start)
        return samples

    rows = [
        ("LaneQueue.position()", timed(queue.position, args.lookups)),
        ("naive: scan 3 lists", timed(lambda j: naive_position(naive, j), args.naive_lookups)),
        (
            "naive: ids_in_order().index",
            timed(lambda j: queue.ids_in_order().index(j), args.naive_lookups),
        ),
    ]

    depths = ", ".join(f"{lane.name} {queue.depth(lane):,}" for lane in Lane)
    print(f"python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    print(f"queued: {len(queue):,} ({depths}) after cancelling {len(cancelled):,} at random")
    header = f"{'position lookup':<29}{'calls':>7}{'mean µs':>10}{'p99 µs':>10}"
    print(f"{header}{'vs ours: mean':>15}{'p99':>6}")
    ours_mean, ours_p99 = summarise(rows[0][1])
    for name, samples in rows:
        mean, p99 = summarise(samples)
        ratios = f"{mean / ours_mean:>14.0f}x{p99 / ours_p99:>5.0f}x"
        print(f"{name:<29}{len(samples):>7,}{mean:>10.2f}{p99:>10.2f}{ratios}")


if __name__ == "__main__":
    main()

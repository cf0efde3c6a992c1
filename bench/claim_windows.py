"""What signing usage claims in windows adds to a run's latency, against signing each directly
(measured side by side in this run).

(1) Floor: ``sign_claim`` (one Ed25519 signature over one payload), per claim.
(2) ``sign_window`` of n claims (the tree, every inclusion proof, one signature): the work the
    thread that gathers a window does before any of its claims can answer.
(3) ``ClaimSigner.sign`` as the worker calls it from its pipeline threads, with the linger
    ``--window-ms`` and ``claim_window_max`` 1024: a lone claim (one run finishing at a time),
    and bursts of k runs finishing at the same moment (k threads released by a barrier). The
    time from a claim's arrival to its envelope, p50 and p99, minus nothing: it includes the
    linger, which is the point.

    python bench/claim_windows.py [--window-ms 2] [--rounds 200]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from render_gateway.usage_claim import sign_claim, sign_window
from render_gateway.worker.claim_signer import ClaimSigner

from support.audit_fixtures import NODE_KEY, make_claim


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def burst(signer: ClaimSigner, size: int) -> list[float]:
    start = threading.Barrier(size)

    def one(index: int) -> float:
        claim = make_claim(index)
        start.wait()
        began = time.perf_counter()
        signer.sign(claim)
        return time.perf_counter() - began

    with ThreadPoolExecutor(size) as pool:
        return list(pool.map(one, range(size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-ms", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores; "
        f"Python {platform.python_version()}; linger {args.window_ms} ms, ≤ 1024 a window"
    )
    claims = [make_claim(i) for i in range(1024)]
    started = time.perf_counter()
    for claim in claims[:500]:
        sign_claim(claim, NODE_KEY)
    direct = (time.perf_counter() - started) / 500
    print(f"\n{'':54}{'ms':>10}")
    print(f"{'floor: sign_claim, one claim (Ed25519)':54}{direct * 1e3:10.3f}")
    for size in (1, 16, 256, 1024):
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            sign_window(claims[:size], NODE_KEY)
            best = min(best, time.perf_counter() - began)
        print(f"{f'sign_window of {size} (tree + proofs + one signature)':54}{best * 1e3:10.3f}")
    signer = ClaimSigner(NODE_KEY, args.window_ms / 1000, 1024)
    print(f"\n{'ClaimSigner.sign, arrival to envelope':54}{'p50 ms':>10}{'p99 ms':>10}"
          f"{'windows':>9}")  # fmt: skip
    lone = []
    for claim in claims[: args.rounds]:
        began = time.perf_counter()
        signer.sign(claim)
        lone.append(time.perf_counter() - began)
    rows = [("a lone claim", lone, args.rounds)]
    for size in (8, 64, 512):
        before = signer.windows_signed
        waits = [w for _ in range(max(1, args.rounds // size)) for w in burst(signer, size)]
        rows.append((f"bursts of {size} finishing together", waits, signer.windows_signed - before))
    for label, waits, windows in rows:
        print(f"{label:54}{percentile(waits, 0.5) * 1e3:10.3f}{percentile(waits, 0.99) * 1e3:10.3f}"
              f"{windows:9}")  # fmt: skip
    added = statistics.median(lone) - direct
    print(f"\nadded latency of a lone claim over signing it directly: {added * 1e3:.3f} ms "
          f"(linger {args.window_ms} ms)")  # fmt: skip


if __name__ == "__main__":
    main()

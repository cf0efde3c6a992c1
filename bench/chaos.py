"""The chaos run of issue 12, longer than the bounded test: three gateway replicas on one
Redis (AOF, appendfsync always), two reference workers, async and sync traffic from three
customers (one with a small budget), a kill -9 every few seconds (a random replica, the
metering lease's holder, a worker) and a restart, and once Redis itself. It prints the same
summary as ``tests/test_chaos_e2e.py``, whose scenario it runs (``tests/support/chaos.py``),
and exits 1 when a check failed.

    python bench/chaos.py [--seconds 300] [--every 6] [--seed 12] [--budget 0.3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.chaos import run_chaos
from support.processes import kill_leftovers, make_demo_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="traffic and faults")
    parser.add_argument("--every", type=float, default=6.0, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--budget", type=float, default=0.3, help="small's GPU-s per month")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it (logs)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="render-chaos-"))
    try:
        model = make_demo_model(root / "models" / "demo")
        report = run_chaos(
            root / "run", model, args.seconds, every=args.every, seed=args.seed,
            budget=args.budget, say=lambda message: print(message, flush=True),
        )  # fmt: skip
    finally:
        kill_leftovers()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(report.summary())
    return 0 if all(not failures for failures in report.checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

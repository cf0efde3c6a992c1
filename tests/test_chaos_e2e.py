"""The chaos test of issue 12, bounded for ``make test``: three replicas on one Redis, two
workers, async and sync traffic from three customers (one with a small budget), a kill -9 every
few seconds (a random replica, the metering lease's holder, a worker) and a restart, and once
Redis itself. The scenario and every check are in ``support/chaos.py`` (``bench/chaos.py`` runs
the same one longer); the summary is printed either way."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.chaos import run_chaos

SECONDS = 60.0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_of_replicas_workers_and_redis_breaks_no_invariant(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    report = run_chaos(tmp_path, demo_model_dir, SECONDS, say=print)
    summary = report.summary()
    print("\n" + summary)
    faults = [e.what for e in report.events]
    # The scenario really happened: each kind of fault, traffic, resumed streams.
    assert "kill -9 redis" in faults, summary
    assert any(f.startswith("kill -9 replica") for f in faults), summary
    assert any(f.startswith("kill -9 worker") for f in faults), summary
    assert report.numbers["jobs 202'd"] >= 20, summary
    assert report.resumed_streams >= 1, summary  # else the SSE check held vacuously
    assert report.small_spent > report.small_limit / 2, summary  # the budget really was spent
    failed = {name: failures for name, failures in report.checks.items() if failures}
    assert not failed, summary

"""The reconciliation entries' chain (audit/run_chain.py) is read by offline verification
without the reconciler's stack: ``audit verify`` paid ~0.67 s importing DuckDB, chDB and pandas
for it on every run. The chain's own checks are in test_reconcile.py (through record_run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("duckdb", "chdb", "pandas", "clickhouse_connect", "render_gateway.metering.store",
         "render_gateway.audit.reconcile")  # fmt: skip


def test_offline_verification_imports_none_of_the_reconciler_stack(tmp_path: Path) -> None:
    """A whole verification of a (empty) local store, in a fresh interpreter."""
    probe = (
        "import sys\n"
        "from render_gateway.audit.verify import verify_log\n"
        "from render_gateway.stores.objects import open_object_store\n"
        f"store = open_object_store({(tmp_path / 'cas').as_uri()!r})\n"
        "assert verify_log(store, [], allow_empty=True).ok\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert loaded == "", f"audit verify pulls in {loaded}"

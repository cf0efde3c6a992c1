"""Reading a worker's counters in tests."""

from __future__ import annotations

import time
from typing import Any

import httpx

from support.processes import WorkerProcess


def stats(worker: WorkerProcess, model: str = "demo") -> dict[str, Any]:
    body = httpx.get(worker.url + f"/v2/models/{model}/stats").json()
    entry: dict[str, Any] = body["model_stats"][0]["render"]
    return entry


def wait_idle(worker: WorkerProcess, timeout: float = 30.0, model: str = "demo") -> dict[str, Any]:
    """Counters once no run holds a slot or is still encoding (so all counters are final)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = stats(worker, model)
        if current["in_flight"] == 0 and current["active"] == 0:
            return current
        time.sleep(0.02)
    raise AssertionError(f"worker still busy after {timeout}s: {stats(worker)}")

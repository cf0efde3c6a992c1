"""Shared fixtures: real processes on 127.0.0.1, a tiny demo pipeline built locally."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.processes import (
    WorkerProcess,
    kill_leftovers,
    make_demo_model,
    start_worker,
    stop_worker,
)


@pytest.fixture(scope="session", autouse=True)
def _no_server_outlives_the_session() -> Iterator[None]:
    yield
    kill_leftovers()


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo pipeline, written by the real CLI (``models make-demo``)."""
    return make_demo_model(tmp_path_factory.mktemp("models") / "demo")


@pytest.fixture(scope="session")
def worker(
    demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One reference worker on the demo model, max_concurrency 1, for the whole session."""
    tmp_path = tmp_path_factory.mktemp("worker")
    process = start_worker(tmp_path, ["--model", f"demo={demo_model_dir}"])
    yield process
    stop_worker(process)


# ``make test-fast`` runs what needs no server process: unit, contract and in-process tests. A
# module that starts workers or gateways imports one of these helpers, and is marked
# ``processes`` for it (``-m "not processes"`` leaves it out).
PROCESS_HELPERS = ("support.processes", "support.gateway", "support.audit_store", "subprocess")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    starts_processes: dict[str, bool] = {}
    for item in items:
        path = str(item.path)
        if path not in starts_processes:
            source = item.path.read_text(encoding="utf-8")
            starts_processes[path] = (
                any(
                    f"from {name} import" in source or f"import {name}" in source
                    for name in PROCESS_HELPERS
                )
                or "_e2e" in item.path.name
            )
        if starts_processes[path]:
            item.add_marker(pytest.mark.processes)

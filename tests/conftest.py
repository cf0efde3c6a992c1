"""Shared fixtures: real processes on 127.0.0.1, a tiny demo pipeline built locally."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from support.browser import missing_browser, running_browser
from support.processes import (
    WorkerProcess,
    kill_leftovers,
    make_demo_model,
    start_worker,
    stop_worker,
)
from support.triton_server import TritonServer, kill_triton_leftovers, start_triton_server
from support.worker_api import GrpcWorker


@pytest.fixture(scope="session", autouse=True)
def _no_server_outlives_the_session() -> Iterator[None]:
    yield
    kill_leftovers()
    kill_triton_leftovers()


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo pipeline, written by the real CLI (``models make-demo``)."""
    return make_demo_model(tmp_path_factory.mktemp("models") / "demo")


@pytest.fixture(scope="session")
def video_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny video pipeline (TextToVideoSD: t2v, H.264 MP4 out), written by the real CLI
    (``models make-demo --kind video``); built here, never downloaded."""
    return make_demo_model(tmp_path_factory.mktemp("models") / "video", kind="video")


@pytest.fixture(scope="session")
def worker(
    demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One reference worker on the demo model, max_concurrency 1, for the whole session."""
    tmp_path = tmp_path_factory.mktemp("worker")
    process = start_worker(tmp_path, ["--model", f"demo={demo_model_dir}"])
    yield process
    stop_worker(process)


@pytest.fixture(scope="session")
def grpc_worker(
    demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GrpcWorker]:
    """``render-gateway worker --grpc-port 0`` on the demo model: the worker picks a free port
    and says which in ``GET /v2/node`` (no race between choosing a port and binding it)."""
    tmp_path = tmp_path_factory.mktemp("grpc-worker")
    process = start_worker(tmp_path, ["--model", f"demo={demo_model_dir}", "--grpc-port", "0"])
    grpc_port = httpx.get(process.url + "/v2/node").json()["grpc_port"]
    assert isinstance(grpc_port, int) and grpc_port > 0
    yield GrpcWorker(process, f"127.0.0.1:{grpc_port}")
    stop_worker(process)


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A real Triton (PyTriton 0.7.0, tritonserver 2.51) with the convention's test models
    (tests/support/triton_models), for the whole session. A test that kills it calls
    ``triton_server.restart()`` before it ends; tests tell their requests apart by prompt or
    request id in ``triton_server.events(...)``."""
    server = start_triton_server(tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    """Headless Debian Chromium through chromedriver (support/browser.py), for the whole session:
    no network beyond 127.0.0.1, console log kept. Load pages with ``open_page(browser, url)``
    and check ``js_errors(browser)`` after; skipped only where /usr/bin/chromium is absent."""
    reason = missing_browser()
    if reason is not None:
        pytest.skip(reason)
    with running_browser() as driver:
        yield driver


# ``make test-fast`` runs what needs no server process: unit, contract and in-process tests. A
# module that starts workers or gateways imports one of these helpers, and is marked
# ``processes`` for it (``-m "not processes"`` leaves it out).
PROCESS_HELPERS = (
    "support.processes",
    "support.gateway",
    "support.audit_store",
    "support.triton_server",
    "support.browser",
    "subprocess",
)
# Fixtures that start a server process: a test using one is marked ``processes`` as well.
PROCESS_FIXTURES = ("triton_server", "grpc_worker", "browser")


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
        uses_process_fixture = any(
            name in getattr(item, "fixturenames", ()) for name in PROCESS_FIXTURES
        )
        if starts_processes[path] or uses_process_fixture:
            item.add_marker(pytest.mark.processes)

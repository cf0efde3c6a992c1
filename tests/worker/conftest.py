"""A worker on the demo model with its KServe v2 gRPC endpoint on, for the Triton-client tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.processes import start_worker, stop_worker
from support.worker_api import GrpcWorker


@pytest.fixture(scope="session")
def grpc_worker(
    demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GrpcWorker]:
    """``render-gateway worker --grpc-port 0``: the worker picks a free port and says which in
    ``GET /v2/node`` (no race between choosing a port and binding it)."""
    tmp_path = tmp_path_factory.mktemp("grpc-worker")
    process = start_worker(tmp_path, ["--model", f"demo={demo_model_dir}", "--grpc-port", "0"])
    grpc_port = httpx.get(process.url + "/v2/node").json()["grpc_port"]
    assert isinstance(grpc_port, int) and grpc_port > 0
    yield GrpcWorker(process, f"127.0.0.1:{grpc_port}")
    stop_worker(process)

"""Reading a worker's counters in tests."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import httpx

from support.processes import WorkerProcess


@dataclass
class GrpcWorker:
    """A worker started with ``--grpc-port``: its process and its gRPC address."""

    process: WorkerProcess
    grpc_address: str  # host:port, as tritonclient.grpc takes it

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def http_address(self) -> str:  # host:port, as tritonclient.http takes it
        return self.process.url.removeprefix("http://")


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


def generated_outputs(body: dict[str, Any], name: str) -> list[bytes]:
    """The bytes of output ``name`` in a ``generate`` answer (Triton's shape: the output at the
    top level, base64 text; one element is the value itself, several are a list)."""
    assert body["parameters"]["content_encoding"] == "base64"
    value = body[name]
    values = value if isinstance(value, list) else [value]
    return [base64.b64decode(v) for v in values]

"""PyTriton's ModelClient against a real worker, over HTTP and gRPC, unchanged.

PyTriton 0.7.0 wants numpy<2, so it lives in its own virtual environment (``make triton-env``,
``.venv-triton`` at the repository root, or ``$TRITON_VENV``); the client runs there, as a
separate process, and reports what it got as JSON.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from support.worker_api import GrpcWorker, wait_idle

pytestmark = pytest.mark.processes  # the grpc_worker fixture starts a worker process

ROOT = Path(__file__).resolve().parents[2]
TRITON_PYTHON = Path(os.environ.get("TRITON_VENV", ROOT / ".venv-triton")) / "bin" / "python"

CLIENT_SCRIPT = """
import json, sys
import numpy as np
from pytriton.client import ModelClient

url, generation = sys.argv[1], sys.argv[2]
with ModelClient(url, "demo", init_timeout_s=30, inference_timeout_s=60) as client:
    config = client.model_config
    outputs = client.infer_sample(request=np.array([generation.encode()], dtype=np.object_))
print(json.dumps({
    "inputs": [[spec.name, spec.dtype.__name__, list(spec.shape)] for spec in config.inputs],
    "outputs": [[spec.name, list(spec.shape)] for spec in config.outputs],
    "batching": config.batching,
    "decoupled": config.decoupled,
    "names": sorted(outputs),
    "magic": bytes(outputs["images"][0][:8]).hex(),
}))
"""


def _model_client(url: str) -> dict[str, Any]:
    if not TRITON_PYTHON.exists():
        pytest.skip(
            f"PyTriton's venv is missing at {TRITON_PYTHON}: run `make triton-env` "
            "(or set TRITON_VENV) to test PyTriton's ModelClient against the worker"
        )
    generation = orjson.dumps({"prompt": "a lighthouse", "seed": 7, "steps": 2}).decode()
    done = subprocess.run(
        [str(TRITON_PYTHON), "-c", CLIENT_SCRIPT, url, generation],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_model_client_infers_against_the_worker(grpc_worker: GrpcWorker, scheme: str) -> None:
    address = grpc_worker.http_address if scheme == "http" else grpc_worker.grpc_address
    report = _model_client(f"{scheme}://{address}")
    wait_idle(grpc_worker.process)
    assert report["inputs"] == [["request", "bytes_", [1]]]  # TYPE_STRING is np.bytes_ to PyTriton
    assert report["outputs"] == [["images", [-1]]]
    assert report["batching"] is False and report["decoupled"] is False
    assert report["names"] == ["images"]
    assert bytes.fromhex(report["magic"]) == b"\x89PNG\r\n\x1a\n"
    assert sys.executable != str(TRITON_PYTHON)  # the client really ran in PyTriton's venv

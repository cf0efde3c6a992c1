"""Schemathesis (its own CLI, every phase, every check) against a live gateway's /openapi.json,
with an admin key and with no key: the document and the behaviour must agree."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.gateway import ONE_WORKER_CONFIG, GatewayProcess, start_gateway, stop_gateway
from support.processes import WorkerProcess
from support.worker_api import wait_idle

# Fuzzed webhooks go nowhere, and are refused on the URL alone: no DNS lookup of a generated
# name leaves this machine (the only host allowed is a loopback literal, which the policy refuses).
CONFIG = ONE_WORKER_CONFIG + """
[gateway.webhooks]
allowed_hosts = ["127.0.0.1"]
"""
SCHEMATHESIS = [str(Path(sys.executable).with_name("schemathesis")), "run"]

# Checks left out, each with why:
EXCLUDED_CHECKS = {
    # DELETE /jobs/{id} cancels (API.md): the job stays readable, with status "cancelled", as
    # fal's and Replicate's do. The check assumes DELETE removes the resource.
    "use_after_free": "DELETE cancels a job; it does not remove it",
    # Still open (issue 10, item 15): the document cannot yet say that i2i/edit need an image
    # and t2i none (the body is one schema for every task), that integers in pass-through fields
    # must fit in 64 bits, and that usage/reconciliation ranges must run forwards and span at
    # most 366 days, so schema-valid requests of those kinds get a 400.
    "positive_data_acceptance": "task/input rules, 64-bit integers, range limits not in the schema",
}


@pytest.fixture(scope="module")
def fuzzed_gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("fuzzed"), CONFIG.format(worker=worker.url))
    yield process
    stop_gateway(process)
    wait_idle(worker, timeout=120)


def run_schemathesis(gateway: GatewayProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        *SCHEMATHESIS,
        gateway.url + "/openapi.json",
        "--checks", "all",
        "--exclude-checks", ",".join(EXCLUDED_CHECKS),
        "--max-examples", "10",
        "--seed", "1",
        "--request-timeout", "20",
        # One worker: hypothesis describing strategies from several threads at once trips
        # CPython 3.11's "AST constructor recursion depth mismatch" (a runtime error, not ours).
        "--workers", "1",
        "--continue-on-failure",
        "--no-color",
        *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=400)


@pytest.mark.parametrize("with_key", [True, False], ids=["admin-key", "no-key"])
def test_gateway_honours_its_openapi_document(
    fuzzed_gateway: GatewayProcess, with_key: bool
) -> None:
    headers = ["-H", f"Authorization: Bearer {fuzzed_gateway.admin_key}"] if with_key else []
    result = run_schemathesis(fuzzed_gateway, *headers)
    report = result.stdout + result.stderr
    print(report[-3000:])
    assert result.returncode == 0, report[-20000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", report)
    assert counts is not None and counts[1] == counts[2] and int(counts[1]) > 500, report[-20000:]
    assert "FAILURES" not in report and "ERRORS" not in report, report[-20000:]

"""A real gateway process (``render-gateway serve``) for tests, and its CLI."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from support.processes import CLI, OFFLINE_ENV, free_port, stop_process, wait_until_ready

# One backend (the test session's reference worker) serving the demo model as image/sd/tiny.
ONE_WORKER_CONFIG = """
[gateway]
local_demo_worker = false

[[gateway.backends]]
id = "w1"
endpoint = "{worker}"
family = "sd"
models = {{ tiny = "demo" }}
capacity = 1

[[gateway.models]]
modality = "image"
family = "sd"
model = "tiny"
tasks = ["t2i", "i2i", "edit"]
aliases = ["render/tiny-sd-demo"]
"""

# ONE_WORKER_CONFIG for tests whose webhook receivers are on 127.0.0.1 over http: both opted in.
LOOPBACK_WEBHOOKS_CONFIG = (
    ONE_WORKER_CONFIG
    + """
[gateway.webhooks]
allow_http = true
allow_private_addresses = true
"""
)


@dataclass
class GatewayProcess:
    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    config_path: Path
    admin_key: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [*CLI, *args, "--config", str(self.config_path), "--data-dir", str(self.data_dir)],
            capture_output=True, check=True, timeout=60, env={**os.environ, **OFFLINE_ENV},
        )  # fmt: skip
        return result.stdout.decode()

    def usage_records(self) -> list[dict[str, Any]]:
        """Every usage record in the embedded usage log (jobs.db), with its signed claim."""
        with sqlite3.connect(self.data_dir / "jobs.db") as conn:
            rows = conn.execute("SELECT record, claim FROM usage_log").fetchall()
        conn.close()
        return [{**orjson.loads(record), "usage_claim": claim} for record, claim in rows]

    def new_key(self, customer: str, plan: str = "default") -> str:
        return (
            self.cli("keys", "create", "--customer", customer, "--plan", plan)
            .strip()
            .splitlines()[-1]
        )


def start_gateway(
    data_dir: Path,
    config: str,
    port: int | None = None,
    timeout: float = 180.0,
    log_level: str = "warning",
) -> GatewayProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "gateway.toml"
    config_path.write_text(config)
    port = port or free_port()
    log_path = data_dir / f"gateway-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*CLI, "serve", "--config", str(config_path), "--data-dir", str(data_dir),
             "--port", str(port), "--log-level", log_level],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(process, url + "/ready", log_path, timeout)
    lines = log_path.read_text().splitlines()
    admin = next((line for line in lines if line.startswith("rk_")), "")
    return GatewayProcess(url, process, data_dir, config_path, admin, log_path)


def stop_gateway(gateway: GatewayProcess) -> None:
    stop_process(gateway.process)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_status(
    gateway: GatewayProcess,
    headers: dict[str, str],
    job_id: str,
    wanted: set[str],
    timeout: float = 60,
) -> dict[str, Any]:
    """The job's JSON once its status is one of ``wanted`` (polled through the real API)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = httpx.get(f"{gateway.url}/jobs/{job_id}", headers=headers).json()
        if body["status"] in wanted:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {wanted}")


def wait_done(
    gateway: GatewayProcess, headers: dict[str, str], job_id: str, timeout: float = 120
) -> dict[str, Any]:
    """The job's JSON once it is terminal."""
    return wait_status(gateway, headers, job_id, {"complete", "error", "cancelled"}, timeout)

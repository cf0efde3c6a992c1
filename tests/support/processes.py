"""Real processes for tests: free ports on 127.0.0.1, a worker started by the real CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

CLI = [sys.executable, "-m", "render_gateway"]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


# Every server process a test starts, so the session can make sure none outlives it.
STARTED: list[subprocess.Popen[bytes]] = []


def kill_leftovers() -> None:
    for process in STARTED:
        if process.poll() is None:
            process.kill()
            process.wait()
    STARTED.clear()


def make_demo_model(directory: Path, kind: str = "image") -> Path:
    """A demo pipeline written by the real CLI (``models make-demo``)."""
    subprocess.run(
        [*CLI, "models", "make-demo", "--kind", kind, str(directory)],
        check=True,
        env={**os.environ, **OFFLINE_ENV},
        capture_output=True,
        timeout=300,
    )
    return directory


def wait_until_ready(
    process: subprocess.Popen[bytes], ready_url: str, log_path: Path | None, timeout: float
) -> None:
    """Track ``process`` for the session's clean-up, and wait until ``ready_url`` answers 200;
    kill it and raise, with its log, if it exits or is not ready in time."""
    STARTED.append(process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = log_path.read_text(errors="replace") if log_path else ""
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{log}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    log = log_path.read_text(errors="replace") if log_path else ""
    raise RuntimeError(f"{process.args!r} not ready within {timeout}s:\n{log}")


def stop_process(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WorkerProcess:
    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(
    tmp_path: Path, args: list[str], timeout: float = 120.0, config: str | None = None
) -> WorkerProcess:
    port = free_port()
    data_dir = tmp_path / "worker-data"
    log_path = tmp_path / f"worker-{port}.log"
    command = [*CLI, "worker", "--port", str(port), "--data-dir", str(data_dir), *args]
    if config is not None:
        config_path = tmp_path / f"worker-{port}.toml"
        config_path.write_text(config)
        command += ["--config", str(config_path)]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV}
        )
    worker = WorkerProcess(f"http://127.0.0.1:{port}", process, data_dir, log_path)
    wait_until_ready(process, worker.url + "/v2/health/ready", log_path, timeout)
    return worker


def stop_worker(worker: WorkerProcess) -> None:
    stop_process(worker.process)

"""Stops of the real ``serve`` process: its demo worker dies with it, a failed start leaves
nothing behind, SIGTERM drains running jobs instead of counting as a crash, and a second
``serve`` on the same data dir refuses before it opens anything."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from support.gateway import (
    ONE_WORKER_CONFIG,
    GatewayProcess,
    start_gateway,
    stop_gateway,
    wait_done,
)
from support.processes import CLI, OFFLINE_ENV, WorkerProcess, free_port
from support.worker_api import wait_idle


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker)


# ------------------------------------------------------------------------------ helpers


def _alive(pid: int) -> bool:
    """Running, not a zombie (a reaped-later orphan still shows up in /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (e.g. a test's own data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _demo_data_dir(tmp_path: Path, demo_model_dir: Path) -> Path:
    """A data dir for serve's own demo worker, with the demo model already written."""
    data = tmp_path / "data"
    shutil.copytree(demo_model_dir, data / "models" / "demo")
    return data


def _serve(
    data: Path, config: Path, port: int, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "serve", "--config", str(config), "--data-dir", str(data), "--port", str(port),
         "--log-level", "warning"],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **OFFLINE_ENV},
    )  # fmt: skip


def _config(worker: WorkerProcess, drain_seconds: float | None = None) -> str:
    config = ONE_WORKER_CONFIG.format(worker=worker.url)
    if drain_seconds is None:
        return config
    return config.replace("[gateway]\n", f"[gateway]\ndrain_seconds = {drain_seconds}\n", 1)


def _submit(gateway: GatewayProcess, headers: dict[str, str], steps: int) -> str:
    response = httpx.post(
        gateway.url + "/queue",
        json={"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
              "prompt": "a long fox", "steps": steps, "seed": 3},
        headers=headers, timeout=30,
    )  # fmt: skip
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _wait_running(gateway: GatewayProcess, headers: dict[str, str], job_id: str) -> None:
    """Until the backend is really computing the job (it has reported a step)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = httpx.get(f"{gateway.url}/jobs/{job_id}", headers=headers).json()
        if body["status"] == "running" and body["progress"] > 0:
            return
        assert body["status"] in ("queued", "running"), body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never started computing")


def _stored_job(data: Path, job_id: str) -> tuple[str, int, dict[str, Any]]:
    """(status, retries, extra) as jobs.db holds them."""
    with sqlite3.connect(data / "jobs.db") as conn:
        status, retries, extra = conn.execute(
            "SELECT status, retries, extra FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    return status, retries, orjson.loads(extra)


def _usage_records(data: Path, job_id: str) -> list[dict[str, Any]]:
    with sqlite3.connect(data / "jobs.db") as conn:
        rows = conn.execute("SELECT record FROM usage_log").fetchall()
    records = [orjson.loads(row[0]) for row in rows]
    return [r for r in records if r.get("job_id") == job_id]


def _sigterm(gateway: GatewayProcess, timeout: float = 60) -> float:
    """SIGTERM, and the seconds until the process has exited."""
    began = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    gateway.process.wait(timeout=timeout)
    return time.monotonic() - began


# -------------------------------------------------------------- children die with parents


def test_kill_9_of_serve_takes_its_demo_worker_with_it(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    data = _demo_data_dir(tmp_path, demo_model_dir)
    gateway = start_gateway(data, "")  # no backends: serve starts its own demo worker
    workers = _processes_naming(str(data / "worker"))
    assert len(workers) == 1, workers
    os.kill(gateway.process.pid, signal.SIGKILL)
    gateway.process.wait()
    deadline = time.monotonic() + 5
    while _alive(workers[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(workers[0]), "the demo worker outlived serve's kill -9"


def test_a_start_that_fails_after_the_demo_worker_started_stops_it(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    data = _demo_data_dir(tmp_path, demo_model_dir)
    key = data / "audit" / "log.key"  # read after the worker is up: a group-readable key
    key.parent.mkdir(parents=True)
    key.write_text("not a key\n")
    key.chmod(0o644)
    config = data / "gateway.toml"
    config.write_text("")
    result = _serve(data, config, free_port())
    assert result.returncode == 1, result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "log.key" in errors[0], output
    assert (data / "local-worker.log").exists()  # the worker had started …
    assert _processes_naming(str(data / "worker")) == []  # … and is gone


def test_a_taken_port_refuses_in_one_line_before_starting_anything(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    data = _demo_data_dir(tmp_path, demo_model_dir)
    config = data / "gateway.toml"
    config.write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(data, config, port, timeout=60)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert output.strip().splitlines() == [output.strip()], output
    assert output.startswith(f"error: cannot listen on 127.0.0.1:{port}"), output
    assert not (data / "local-worker.log").exists()  # no worker was ever started
    assert not (data / "jobs.db").exists()  # and no store opened


# --------------------------------------------------------------------- drain on SIGTERM


def test_sigterm_lets_a_running_job_finish_within_the_grace_and_bills_it(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    gateway = start_gateway(data, _config(worker, drain_seconds=120))
    admin = {"Authorization": f"Bearer {gateway.admin_key}"}
    job_id = _submit(gateway, admin, steps=40)
    _wait_running(gateway, admin, job_id)
    queued_behind = _submit(gateway, admin, steps=1)  # must not be claimed once the stop began
    _sigterm(gateway)
    status, retries, extra = _stored_job(data, job_id)
    assert (status, retries) == ("complete", 0), extra
    records = _usage_records(data, job_id)
    assert len(records) == 1 and records[0]["status"] == "success" and records[0]["billable"]
    assert _stored_job(data, queued_behind)[:2] == ("queued", 0)


def test_sigterm_requeues_a_job_past_the_grace_without_a_retry_and_it_completes_once(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    config = _config(worker, drain_seconds=0.5)
    first = start_gateway(data, config)
    admin = {"Authorization": f"Bearer {first.admin_key}"}
    job_id = _submit(first, admin, steps=300)
    _wait_running(first, admin, job_id)
    stopped_in = _sigterm(first)
    assert stopped_in < 15, stopped_in  # the grace, the cancel at the next step, the close
    status, retries, extra = _stored_job(data, job_id)
    assert (status, retries) == ("queued", 0), extra
    assert _usage_records(data, job_id) == []  # the stopped partial run is not billed …
    (run,) = extra["drained_runs"]  # … but its signed claim is kept for operators
    assert run["usage_claim"] and 0 < run["steps_completed"] < 300, run
    wait_idle(worker)  # the backend really stopped the run

    for restart in range(3):  # three clean restarts: once the cause of `interrupted`
        again = start_gateway(data, config)
        _wait_running(again, admin, job_id)
        _sigterm(again)
        assert _stored_job(data, job_id)[:2] == ("queued", 0), restart
        wait_idle(worker)

    last = start_gateway(data, _config(worker))
    try:
        done = wait_done(last, admin, job_id, timeout=180)
    finally:
        stop_gateway(last)
    assert done["status"] == "complete" and done["retries"] == 0, done
    records = _usage_records(data, job_id)
    assert len(records) == 1 and records[0]["status"] == "success", records
    assert len(_stored_job(data, job_id)[2]["drained_runs"]) == 4


# ---------------------------------------------------------------- one serve per data dir


def test_a_second_serve_on_the_same_data_dir_refuses_and_leaves_the_first_alone(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = start_gateway(data, _config(worker))
    try:
        admin = {"Authorization": f"Bearer {first.admin_key}"}
        job_id = _submit(first, admin, steps=300)
        _wait_running(first, admin, job_id)
        result = _serve(data, first.config_path, free_port(), timeout=60)
        assert result.returncode == 1
        output = result.stdout + result.stderr
        assert "Traceback" not in output
        assert output.strip().splitlines() == [output.strip()], output
        assert f"pid {first.process.pid}" in output, output
        # The first's running job was not recovered under it, and the store CLI still works.
        status, retries, _ = _stored_job(data, job_id)
        assert status in ("running", "complete") and retries == 0, status
        assert first.new_key("carol").startswith("rk_")
        done = wait_done(first, admin, job_id)
        assert done["status"] == "complete" and done["retries"] == 0, done
        assert len(_usage_records(data, job_id)) == 1
    finally:
        stop_gateway(first)

"""``scripts/cluster.py`` (``make cluster``) run for real: one redis-server, two workers and
three replicas come up; a job sent through replica 2 is read done through replica 3; SIGTERM
stops every process the script started (nothing is left running, not even a grandchild)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support.processes import OFFLINE_ENV, STARTED

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cluster.py"
BODY = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": "a fox",
        "steps": 2, "width": 64, "height": 64}  # fmt: skip
START_SECONDS = 75.0  # the whole test stays under 90 s


def descendants(root: int) -> dict[int, str]:
    """Every live process under ``root`` (children, grandchildren…), by pid, with its start
    time (field 22 of /proc/<pid>/stat), so that a reused pid is not taken for the old one."""
    parents: dict[int, int] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while we looked
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        started[int(entry.name)] = fields[19]
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = started[pid]
                frontier.append(pid)
    return found


def still_running(pid: int, start_time: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] == start_time and fields[0] != "Z"


def wait_for_line(out: Path, process: subprocess.Popen[bytes], text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        printed = out.read_text(errors="replace")
        if text in printed:
            return printed
        if process.poll() is not None:
            raise AssertionError(f"cluster.py exited with {process.returncode}:\n{printed}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} within {timeout}s:\n{out.read_text(errors='replace')}")


def test_the_cluster_script_serves_across_replicas_and_stops_every_child(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cluster.out"
    with out.open("wb") as out_file:
        script = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--data-dir", str(tmp_path / "cluster"),
             "--model", str(demo_model_dir), "--port", "0", "--worker-port", "0",
             "--timeout", str(START_SECONDS)],
            stdout=out_file, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV},
        )  # fmt: skip
    STARTED.append(script)  # the session kills it should an assertion leave it running
    children: dict[int, str] = {}
    try:
        printed = wait_for_line(out, script, "cluster ready", START_SECONDS)
        children = descendants(script.pid)
        replicas = re.findall(r"^replica \d+ (http://127\.0\.0\.1:\d+)", printed, re.M)
        assert len(replicas) == 3, printed
        keys = re.findall(r"^admin API key (rk_\S+)$", printed, re.M)
        assert len(keys) == 1, printed
        # Which replica holds each singleton, read from the leases in Redis.
        for name in ("metering", "audit"):  # the reconciler runs under the metering lease
            assert re.search(rf"^lease {name} held by replica \d ", printed, re.M), printed
        # redis-server, two workers and three replicas: six children, none of them 6379.
        assert len(children) >= 6, children
        assert ":6379" not in printed

        headers = {"Authorization": f"Bearer {keys[0]}"}
        for url in replicas:
            assert httpx.get(url + "/ready", timeout=5).status_code == 200
        made = httpx.post(replicas[1] + "/queue", json=BODY, headers=headers, timeout=30)
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        deadline = time.monotonic() + 30
        job: dict[str, object] = {}
        while time.monotonic() < deadline:
            job = httpx.get(f"{replicas[2]}/jobs/{job_id}", headers=headers, timeout=10).json()
            if job["status"] in ("complete", "error", "cancelled"):
                break
            time.sleep(0.2)
        assert job.get("status") == "complete", job
    finally:
        script.send_signal(signal.SIGTERM)
        try:
            script.wait(timeout=45)
        except subprocess.TimeoutExpired:
            script.kill()
            script.wait()
            pytest.fail(f"cluster.py did not stop on SIGTERM:\n{out.read_text()}")
    printed = out.read_text(errors="replace")
    assert script.returncode == 0, printed
    assert "SIGTERM: stopping the replicas, then the workers, then redis" in printed
    assert printed.rstrip().endswith("stopped"), printed
    left = [pid for pid, start in children.items() if still_running(pid, start)]
    assert left == [], f"still running after the script stopped: {left}\n{printed}"

"""A real Triton server for the tests (issue 13): PyTriton 0.7.0 in its own venv.

``start_triton_server(tmp_path)`` runs ``triton_models/serve.py`` with the Triton venv's
python on free 127.0.0.1 ports and waits for its ready line. The venv is
``<repo>/.venv-triton`` (``make triton-env``), or ``$RENDER_TRITON_VENV``; where it is missing
the fixture runs ``make triton-env`` once and skips, loudly, only if that fails.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE = Path(__file__).resolve().parent / "triton_models" / "serve.py"
READY_TIMEOUT = 120.0
READY = '{"ready": true'  # how serve.py's ready line starts
# Names the models serve.py binds or loads; the tests may rely on these.
MODELS = ("painter", "plain", "broken", "stepper", "stepper_stream")

Event = dict[str, Any]


def triton_venv() -> Path:
    return Path(os.environ.get("RENDER_TRITON_VENV", REPO_ROOT / ".venv-triton"))


_install_tried: dict[Path, str | None] = {}


def ensure_triton_venv() -> Path:
    """The Triton venv's python; runs ``make triton-env`` once if it is missing, and skips the
    test (with the reason in capitals) only where that install fails."""
    venv = triton_venv()
    python = venv / "bin" / "python"
    if _installed(venv):
        return python
    if venv not in _install_tried:
        result = subprocess.run(
            ["make", "triton-env", f"TRITON_VENV={venv}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        tail = (result.stdout + result.stderr)[-2000:]
        _install_tried[venv] = None if result.returncode == 0 else tail
    failure = _install_tried[venv]
    if failure is not None or not _installed(venv):
        pytest.skip(
            f"REAL-TRITON TESTS SKIPPED: `make triton-env` could not install PyTriton into "
            f"{venv} on this machine:\n{failure}"
        )
    return python


def _installed(venv: Path) -> bool:
    return (venv / "bin" / "python").exists() and any(venv.glob(".installed-pytriton-*"))


def server_env(python: Path) -> dict[str, str]:
    """The environment Triton's Python-backend stub needs here: it links Debian's libpython
    but runs this venv's stdlib, so the venv python's own ``libpython`` must come first
    (without it model load fails: '_thread.RLock' object has no attribute
    '_recursion_count'), and the venv's ``bin`` first on PATH."""
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    env["PATH"] = f"{python.parent}:{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)  # the tests' PYTHONPATH (src/, tests/) is not for this venv
    return env


@dataclass
class TritonServer:
    """One running serve.py (PyTriton + tritonserver + the stub processes, one process group)."""

    python: Path
    directory: Path
    http_port: int
    grpc_port: int
    process: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_host(self) -> str:
        """``host:port``, as tritonclient.http wants it."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def events_path(self) -> Path:
        return self.directory / "events.jsonl"

    @property
    def log_path(self) -> Path:
        return self.directory / "serve.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, model: str | None = None, **match: Any) -> list[Event]:
        """The events the models wrote, in order; filtered by model and by exact fields
        (e.g. ``prompt="..."``, ``id="..."``, ``event="done"``)."""
        if not self.events_path.exists():
            return []
        # Only whole lines: the last piece may be a line a model is writing right now.
        lines = self.events_path.read_text(encoding="utf-8").split("\n")[:-1]
        found = [json.loads(line) for line in lines if line.strip()]
        return [
            event
            for event in found
            if (model is None or event["model"] == model)
            and all(event.get(key) == value for key, value in match.items())
        ]

    def wait_for_event(self, predicate: Callable[[Event], bool], timeout: float = 30.0) -> Event:
        """The first event matching ``predicate``, polling the events file until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if predicate(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no matching Triton model event within {timeout}s; events: {self.events()}"
                )
            time.sleep(0.02)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        command = [
            str(self.python),
            str(SERVE),
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--repository",
            str(self.directory / "repository"),
            "--events",
            str(self.events_path),
        ]
        ready_lines_before = self.log().count(READY)
        with self.log_path.open("ab") as log_file:
            # Its own session: kill() takes tritonserver and the stubs down with it.
            self.process = subprocess.Popen(
                command,
                cwd=SERVE.parent,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=server_env(self.python),
                start_new_session=True,
            )
        _RUNNING.append(self)
        self.ready = self._wait_ready(timeout, ready_lines_before)

    def _wait_ready(self, timeout: float, ready_lines_before: int) -> dict[str, Any]:
        """serve.py's ready line; after restart() the log also holds the earlier ones."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready_lines = [line for line in self.log().splitlines() if line.startswith(READY)]
            if len(ready_lines) > ready_lines_before:
                ready: dict[str, Any] = json.loads(ready_lines[-1])
                return ready
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Triton (serve.py) exited with {self.process.returncode}:\n"
                    f"{self.log()[-6000:]}"
                )
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"Triton not ready within {timeout}s:\n{self.log()[-6000:]}")

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM: PyTriton unloads the models and stops tritonserver."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        self._kill_group()
        self._forget()

    def kill(self) -> None:
        """SIGKILL the whole group at once (serve.py, tritonserver, the stubs): Triton gone
        mid-run, with no chance to answer anything."""
        self._kill_group()
        self._forget()

    def restart(self, timeout: float = READY_TIMEOUT) -> None:
        """Stop (or reap a killed one) and start again on the same ports and events file."""
        self.stop()
        self.start(timeout)

    def _kill_group(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def _forget(self) -> None:
        if self in _RUNNING:
            _RUNNING.remove(self)


_RUNNING: list[TritonServer] = []


def kill_triton_leftovers() -> None:
    for server in list(_RUNNING):
        server.kill()


# Scripts that use start_triton_server outside pytest get the same guarantee.
atexit.register(kill_triton_leftovers)


def start_triton_server(directory: Path, timeout: float = READY_TIMEOUT) -> TritonServer:
    """A real Triton with the test models on free ports; skips only if it cannot be installed."""
    python = ensure_triton_venv()
    directory.mkdir(parents=True, exist_ok=True)
    server = TritonServer(python, directory, free_port(), free_port())
    server.start(timeout)
    return server

"""A reference worker started by ``serve`` when no backend is configured, so a fresh install
can generate an image at once. It runs as a child process on a free 127.0.0.1 port, and dies
with its parent: the kernel kills it when ``serve`` dies (even by ``kill -9``), it watches its
parent pid itself as a belt, and a start that fails kills the worker it started."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from render_gateway.parent_death import die_with_parent

log = logging.getLogger(__name__)

DEMO_MODEL = "demo"


class LocalWorkerError(RuntimeError):
    """The demo worker could not be started; the message is one line for the operator."""


@dataclass
class LocalWorker:
    process: subprocess.Popen[bytes]
    endpoint: str

    async def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            await asyncio.to_thread(self.process.wait, 15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _write_demo_model(
    cli: list[str], model_dir: Path, env: dict[str, str], log_path: Path
) -> None:
    log.info("writing the demo model to %s", model_dir)
    with log_path.open("ab") as log_file:
        made = await asyncio.to_thread(
            subprocess.run, [*cli, "models", "make-demo", str(model_dir)],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, timeout=300,
            preexec_fn=die_with_parent,
        )  # fmt: skip
    if made.returncode != 0:
        raise LocalWorkerError(
            f"cannot write the demo model (is the [worker] extra installed?); see {log_path}"
        )


async def start_local_worker(data_dir: Path, startup_seconds: float = 180.0) -> LocalWorker:
    model_dir = data_dir / "models" / DEMO_MODEL
    log_path = data_dir / "local-worker.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cli = [sys.executable, "-m", "render_gateway"]
    if not (model_dir / "model_index.json").exists():
        await _write_demo_model(cli, model_dir, env, log_path)
    port = _free_port()
    with log_path.open("ab") as log_file:
        # Started from this (the event loop's) thread, not a pool thread: the parent-death
        # signal fires when the thread that forked the child ends.
        process = subprocess.Popen(  # noqa: S603, ASYNC220 (our own CLI; fork is quick)
            [*cli, "worker", "--host", "127.0.0.1", "--port", str(port), "--data-dir",
             str(data_dir / "worker"), "--model", f"{DEMO_MODEL}={model_dir}",
             "--parent-pid", str(os.getpid())],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent,
        )  # fmt: skip
    worker = LocalWorker(process, f"http://127.0.0.1:{port}")
    try:
        await _wait_ready(worker, startup_seconds, log_path)
    except BaseException:  # a failed or interrupted start must not leave the worker behind
        await worker.stop()
        raise
    log.info("local demo worker ready at %s", worker.endpoint)
    return worker


async def _wait_ready(worker: LocalWorker, startup_seconds: float, log_path: Path) -> None:
    deadline = asyncio.get_running_loop().time() + startup_seconds
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            if worker.process.poll() is not None:
                raise LocalWorkerError(f"the local worker exited; see {log_path}")
            try:
                async with session.get(worker.endpoint + "/v2/health/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
    raise LocalWorkerError(
        f"the local worker did not become ready in {startup_seconds:g}s; see {log_path}"
    )

"""A reference worker started by ``serve`` when no backend is configured, so a fresh install
can generate an image at once. It runs as a child process on a free 127.0.0.1 port."""

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

log = logging.getLogger(__name__)

DEMO_MODEL = "demo"


@dataclass
class LocalWorker:
    process: subprocess.Popen[bytes]
    endpoint: str

    async def stop(self) -> None:
        self.process.terminate()
        try:
            await asyncio.to_thread(self.process.wait, 15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_local_worker(data_dir: Path, startup_seconds: float = 180.0) -> LocalWorker:
    model_dir = data_dir / "models" / DEMO_MODEL
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cli = [sys.executable, "-m", "render_gateway"]
    if not (model_dir / "model_index.json").exists():
        log.info("writing the demo model to %s", model_dir)
        made = await asyncio.to_thread(
            subprocess.run, [*cli, "models", "make-demo", str(model_dir)],
            env=env, capture_output=True, timeout=300,
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(
                "cannot write the demo model (is the [worker] extra installed?): "
                + made.stderr.decode(errors="replace")[-2000:]
            )
    port = _free_port()
    log_file = (data_dir / "local-worker.log").open("ab")
    process = await asyncio.to_thread(
        subprocess.Popen,
        [*cli, "worker", "--host", "127.0.0.1", "--port", str(port), "--data-dir",
         str(data_dir / "worker"), "--model", f"{DEMO_MODEL}={model_dir}"],
        stdout=log_file, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    worker = LocalWorker(process, f"http://127.0.0.1:{port}")
    deadline = asyncio.get_running_loop().time() + startup_seconds
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the local worker exited; see {data_dir / 'local-worker.log'}")
            try:
                async with session.get(worker.endpoint + "/v2/health/ready") as response:
                    if response.status == 200:
                        log.info("local demo worker ready at %s", worker.endpoint)
                        return worker
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
    await worker.stop()
    raise RuntimeError(f"the local worker did not become ready in {startup_seconds}s")

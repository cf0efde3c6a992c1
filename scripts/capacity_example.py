"""Serve real traffic, measure the queue, then ask the planner: docs/OPERATIONS.md's example.

Starts ``render-gateway serve`` (embedded stores, its local demo worker, capacity 1) on
127.0.0.1, submits queued jobs with Poisson arrivals at ``--rate`` per second for
``--seconds``, samples ``GET /queue/stats`` every 100 ms (the measured queue length, and the
time-average of it), waits for the jobs to end, then prints ``render-gateway capacity --json``
over that window beside what was measured. Nothing leaves 127.0.0.1.

    .venv/bin/python scripts/capacity_example.py --rate 8 --seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

CLI = [sys.executable, "-m", "render_gateway"]
JOB = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
       "prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 4}  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_gateway(data_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    log = (data_dir / "gateway.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 (our own CLI, our own arguments)
        [*CLI, "serve", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        raise SystemExit("the gateway did not become ready")
    key = re.search(r"^(rk_\S+)$", (data_dir / "gateway.log").read_text(), re.M)
    if key is None:
        raise SystemExit("no admin key in the gateway's log")
    return process, key.group(1)


async def drive(url: str, key: str, rate: float, seconds: float) -> tuple[list[str], list[int]]:
    """Poisson arrivals of queued jobs; the queue's depth sampled every 100 ms meanwhile."""
    headers = {"Authorization": f"Bearer {key}"}
    jobs: list[str] = []
    depths: list[int] = []
    rng = random.Random(15)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:

        async def sample() -> None:
            while True:
                stats = (await client.get("/queue/stats")).json()
                depths.append(stats["queued"])
                await asyncio.sleep(0.1)

        async def submit(seed: int) -> None:
            answer = await client.post("/queue", json={**JOB, "seed": seed})
            answer.raise_for_status()
            jobs.append(answer.json()["id"])

        sampler = asyncio.create_task(sample())
        pending = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(rng.expovariate(rate))
            pending.append(asyncio.create_task(submit(len(pending))))
        await asyncio.gather(*pending)
        # The queue drains in another process: polling its API is the only way to see it.
        while (await client.get("/queue/stats")).json()["queued"]:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        sampler.cancel()
    return jobs, depths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=8.0, help="arrivals per second")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to submit")
    parser.add_argument("--target-wait", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="render-capacity-") as temp:
        data_dir = Path(temp)
        port = free_port()
        process, key = start_gateway(data_dir, port)
        url = f"http://127.0.0.1:{port}"
        try:
            started = time.time()
            jobs, depths = asyncio.run(drive(url, key, args.rate, args.seconds))
            time.sleep(3)  # the hot path is fed within about a second
            window = max(60, int(time.time() - started) + 1)
            planned = subprocess.run(  # noqa: S603 (our own CLI, our own arguments)
                [*CLI, "capacity", "--json", "--window", str(window), "--target-wait",
                 str(args.target_wait), "--data-dir", str(data_dir), "--api-key", key,
                 "--url", url],
                capture_output=True, text=True, check=True, timeout=120,
            )  # fmt: skip
        finally:
            process.terminate()
            process.wait(60)
    measured = {
        "jobs_submitted": len(jobs),
        "offered_rate_per_s": args.rate,
        "submitting_seconds": args.seconds,
        "queue_samples": len(depths),
        "queue_length_mean": round(statistics.fmean(depths), 3) if depths else None,
        "queue_length_max": max(depths, default=None),
        "window_seconds": window,
    }
    print(json.dumps({"measured": measured, "capacity": json.loads(planned.stdout)}, indent=2))


if __name__ == "__main__":
    main()

"""Where a gateway's CPU goes, per thread: the method of docs/BENCHMARKS.md (issue 16).

Starts the fixed backend and a real ``render-gateway serve`` exactly as
``bench/gateway_overhead.py`` does (its helpers), drives one kind of load for a fixed time,
and prints each thread's ``utime + stime`` (``/proc/<pid>/task/<tid>/stat``) divided by the
requests served, with thread names from ``py-spy dump`` (``pip install py-spy``; without it
threads show as ``tid…``). ``--record FILE`` also samples stacks with ``py-spy record --gil``
(only the thread holding the GIL is sampled: the GIL waits that make sampled stacks misleading
are left out). Run a tree against another by its ``PYTHONPATH``, alternating:

    PYTHONPATH=src python scripts/thread_cpu.py --mode stream|infer|queue [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gateway_overhead as bench


def thread_cpu(pid: int) -> dict[int, float]:
    seconds: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def py_spy() -> str | None:
    """py-spy on PATH, else beside this interpreter (a venv's bin/ need not be on PATH)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def thread_names(pid: int) -> dict[int, str]:
    spy = py_spy()
    if spy is None:
        return {}
    dump = subprocess.run(  # noqa: S603 (py-spy, on the pid this script started)
        [spy, "dump", "--pid", str(pid)], capture_output=True, text=True
    )
    names: dict[int, str] = {}
    for line in dump.stdout.splitlines():
        if line.startswith("Thread ") and '"' in line:
            tid = line.split()[1]
            names[int(tid, 16) if tid.startswith("0x") else int(tid)] = line.split('"')[1]
    return names


async def measure(args: argparse.Namespace, root: Path, procs: bench.Processes) -> None:
    backend_port = bench.free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    procs.start("backend", [sys.executable, str(bench.BENCH / "fixed_backend.py"), "--port",
                            str(backend_port)])  # fmt: skip
    if args.mode == "queue":  # a backend where nothing listens: every job stays queued
        dead = f"http://127.0.0.1:{bench.free_port()}"
        backends = [{"id": "down", "endpoint": dead, "type": "torch", "streaming": True}]
    else:
        backends = [
            {"id": "fixed-stream", "endpoint": backend_url, "type": "stream", "streaming": True},
            {"id": "fixed-infer", "endpoint": backend_url, "type": "infer", "streaming": False},
        ]
    data_dir, config = bench.prepare_gateway(root, "gateway", bench.gateway_config(backends))
    gateway = bench.start_gateway(procs, "gateway", config, data_dir,
                                  bench.create_key(config, data_dir))  # fmt: skip
    headers = {**gateway.auth, **bench.JSON}
    if args.mode == "queue":
        send = bench.poster(gateway.url + "/queue", bench.QUEUE_BODY, headers)
    else:
        url = f"{gateway.url}/image/sd/tiny/t2i?backend={args.mode}"
        send = bench.poster(url, bench.SYNC_BODY, headers)
    async with aiohttp.ClientSession(connector=bench.connector(args.concurrency)) as session:
        ready = 503 if args.mode == "queue" else 200
        await bench.wait_for(session, backend_url + "/v2/health/ready", 200, lambda: None)
        await bench.wait_for(session, gateway.url + "/ready", ready,
                             lambda: procs.check("gateway", gateway.process))  # fmt: skip
        await bench.drive(session, 300, args.concurrency, send)  # warm-up
        pid = gateway.process.pid
        recorder = None
        if args.record and (spy := py_spy()):
            recorder = await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(pid), "--threads", "-f", "raw", "-o", args.record,
                "-d", str(int(args.seconds)), "-r", "200", "--nonblocking", "--gil",
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        before, total_before = thread_cpu(pid), bench.cpu_seconds(pid)
        served, statuses = 0, Counter[int]()
        stop = time.monotonic() + args.seconds

        async def client() -> None:
            nonlocal served
            while time.monotonic() < stop:
                status, _ = await send(session, served)
                served += 1
                statuses[status] += 1

        await asyncio.gather(*(client() for _ in range(args.concurrency)))
        after, total_after = thread_cpu(pid), bench.cpu_seconds(pid)
        names = await asyncio.to_thread(thread_names, pid)
        if recorder is not None:
            await recorder.wait()
    print(f"mode={args.mode} requests={served} rate={served / args.seconds:.0f}/s "
          f"statuses={dict(statuses)} CPU-ms/request={(total_after - total_before) * 1000 / served:.3f}")  # fmt: skip  # noqa: E501
    by_name: defaultdict[str, float] = defaultdict(float)
    for tid, seconds in after.items():
        by_name[names.get(tid, f"tid{tid}")] += seconds - before.get(tid, 0.0)
    for name, seconds in sorted(by_name.items(), key=lambda item: -item[1]):
        if seconds > 0:
            print(f"  {name:30s} {seconds * 1000 / served:.3f} ms/request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("stream", "infer", "queue"), default="stream")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--record", help="also write py-spy's raw samples here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="thread-cpu-") as scratch:
        procs = bench.Processes(Path(scratch))
        try:
            asyncio.run(measure(args, Path(scratch), procs))
        finally:
            procs.stop_all()


if __name__ == "__main__":
    main()

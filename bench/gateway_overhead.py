"""The gateway's own cost, measured side by side with a bare pass-through proxy in one run.

(a) CPU-ms per sync request: a real ``render-gateway serve`` process and a bare aiohttp
    pass-through proxy (``bench/passthrough_proxy.py``, the floor any Python proxy pays) in front
    of the SAME fixed-response KServe v2 backend (``bench/fixed_backend.py``). CPU time is the
    server process's utime + stime (all its threads) over the measured window, divided by the
    requests served; requests/s and latency percentiles are the client's. The gateway runs with
    two backends on the same fixed backend: ``streaming = true`` (``generate_stream``, SSE) and
    ``streaming = false`` (``infer``, binary tensors), chosen per request with ``?backend=``.
(b) Async submissions per second: 202s from ``POST /queue`` on a second gateway with the default
    durability (``sqlite_synchronous = "FULL"``), whose only backend is a port where nothing
    listens: its probe marks it down, so every job stays queued and nothing is dispatched.
(c) Position lookups: with every job queued in (b) and then as many more as fit in the fill
    time, ``GET /jobs/{id}`` for jobs spread over the whole queue (one at a time), against
    ``GET /health`` on the same gateway as the HTTP floor; each answer's ``position`` is
    checked against the one its 202 reported.

A second floor, the framework's: ``bench/fastapi_floor.py`` serves the same three shapes (a
sync request forwarded to the same backend, a 202 for ``POST /queue``, a JSON ``GET /jobs/{id}``)
on FastAPI and uvicorn, the gateway's stack, with none of its work (no auth store, rate limit,
budget, durable write or billing). Each gateway figure is printed beside both floors, with the
targets of issue 16.

Load comes from this process (aiohttp, keep-alive connections). Everything binds 127.0.0.1 on
free ports, lives in a temporary directory, and is stopped on exit, errors included.

    python bench/gateway_overhead.py [--requests 3000] [--warmup 300] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

BENCH = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "render_gateway"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
SYNC_BODY = orjson.dumps({"prompt": "x"})
QUEUE_BODY = orjson.dumps(
    {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": "x"}
)
JSON = {"Content-Type": "application/json"}
FLOOR_AUTH = {"Authorization": "Bearer floor"}  # the framework floor reads it, checks nothing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3, state
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# ------------------------------------------------------------------------------ processes


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a child set-up that sends the child SIGTERM when this process dies, however it
    dies (SIGKILL included): the ``finally`` that stops the children cannot cover every case."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, never between fork and exec
    pr_set_pdeathsig = 1

    def set_signal() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return set_signal


class Processes:
    """Every process this benchmark starts; ``stop_all`` ends them, newest first."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._child_setup = _parent_death_signal()

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:  # a file, never an unread pipe
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=ENV,
                preexec_fn=self._child_setup,
            )
        self.started.append((name, process))
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def check(self, name: str, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log(name)}")

    def stop_all(self) -> None:
        for _, process in reversed(self.started):
            if process.poll() is None:
                process.terminate()
        for _, process in reversed(self.started):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_for(
    session: aiohttp.ClientSession,
    url: str,
    status: int,
    check: Callable[[], None],
    within: float = 60.0,
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        check()
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                await response.read()
                if response.status == status:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer {status} within {within:.0f}s")


def gateway_config(backends: list[dict[str, Any]]) -> str:
    lines = [
        "[gateway]",
        "local_demo_worker = false",
        "max_queued_jobs = 10000000",
        "",
        "[gateway.plans.default]",
        "rate_capacity = 1e9",
        "rate_refill_per_second = 1e9",
        "max_queued_jobs = 10000000",
        "",
        "[[gateway.models]]",
        'modality = "image"',
        'family = "sd"',
        'model = "tiny"',
        'tasks = ["t2i"]',
    ]
    for backend in backends:
        lines += [
            "",
            "[[gateway.backends]]",
            f'id = "{backend["id"]}"',
            f'endpoint = "{backend["endpoint"]}"',
            'family = "sd"',
            'models = { tiny = "tiny" }',
            "capacity = 64",
            f'type = "{backend["type"]}"',
            f"streaming = {'true' if backend['streaming'] else 'false'}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class Gateway:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def prepare_gateway(root: Path, name: str, config: str) -> tuple[Path, Path]:
    """A data directory and a config file for one gateway."""
    data_dir = root / name
    data_dir.mkdir(mode=0o700)
    config_path = root / f"{name}.toml"
    config_path.write_text(config)
    return data_dir, config_path


def create_key(config_path: Path, data_dir: Path) -> str:
    """The benchmark customer's API key, from the real CLI (the secret is the last line)."""
    result = subprocess.run(
        [*CLI, "keys", "create", "--customer", "bench", "--config", str(config_path),
         "--data-dir", str(data_dir)],
        capture_output=True, check=True, timeout=60, env=ENV,
    )  # fmt: skip
    return result.stdout.decode().strip().splitlines()[-1]


def start_gateway(
    procs: Processes, name: str, config_path: Path, data_dir: Path, key: str
) -> Gateway:
    port = free_port()
    process = procs.start(
        name,
        [*CLI, "serve", "--config", str(config_path), "--data-dir", str(data_dir),
         "--port", str(port), "--log-level", "warning"],
    )  # fmt: skip
    return Gateway(name, f"http://127.0.0.1:{port}", process, key)


# ---------------------------------------------------------------------------------- load


@dataclass
class Run:
    count: int
    seconds: float
    latencies: list[float]
    statuses: Counter[int]
    server_cpu: float = 0.0
    backend_cpu: float = 0.0
    client_cpu: float = 0.0
    bodies: list[bytes] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def per_request_ms(self, seconds: float) -> float:
        return seconds * 1000 / self.count


Send = Callable[[aiohttp.ClientSession, int], Awaitable[tuple[int, bytes]]]


async def drive(
    session: aiohttp.ClientSession, count: int, concurrency: int, send: Send, keep: bool = False
) -> Run:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    kept: list[bytes] = []
    numbers = iter(range(count))

    async def worker() -> None:
        for n in numbers:
            started = time.perf_counter()
            status, body = await send(session, n)
            latencies.append(time.perf_counter() - started)
            statuses[status] += 1
            if keep:
                kept.append(body)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Run(count, time.perf_counter() - started, latencies, statuses, bodies=kept)


def poster(url: str, body: bytes, headers: dict[str, str]) -> Send:
    async def send(session: aiohttp.ClientSession, _n: int) -> tuple[int, bytes]:
        async with session.post(url, data=body, headers=headers) as response:
            return response.status, await response.read()

    return send


def getter(urls: list[str], headers: dict[str, str]) -> Send:
    async def send(session: aiohttp.ClientSession, n: int) -> tuple[int, bytes]:
        async with session.get(urls[n % len(urls)], headers=headers) as response:
            return response.status, await response.read()

    return send


async def measured(
    session: aiohttp.ClientSession,
    count: int,
    concurrency: int,
    send: Send,
    server_pid: int,
    backend_pid: int | None = None,
    keep: bool = False,
) -> Run:
    """One load run with CPU read from the server (and backend) before and after."""
    server0 = cpu_seconds(server_pid)
    backend0 = cpu_seconds(backend_pid) if backend_pid else 0.0
    client0 = time.process_time()
    run = await drive(session, count, concurrency, send, keep)
    run.client_cpu = time.process_time() - client0
    run.server_cpu = cpu_seconds(server_pid) - server0
    run.backend_cpu = (cpu_seconds(backend_pid) - backend0) if backend_pid else 0.0
    return run


def connector(limit: int) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=limit, force_close=False)


# ---------------------------------------------------------------------------------- phases


async def backend_stats(session: aiohttp.ClientSession, backend_url: str) -> dict[str, int]:
    async with session.get(backend_url + "/stats") as response:
        stats: dict[str, int] = await response.json()
        return stats


async def sync_phase(
    args: argparse.Namespace,
    procs: Processes,
    proxy_url: str,
    proxy: subprocess.Popen[bytes],
    framework_url: str,
    framework: subprocess.Popen[bytes],
    gateway: Gateway,
    backend: subprocess.Popen[bytes],
    backend_url: str,
) -> list[tuple[str, Run, dict[str, int]]]:
    route = "/image/sd/tiny/t2i"
    targets = [
        ("proxy (floor)", poster(proxy_url + route, SYNC_BODY, JSON), proxy.pid),
        (
            "fastapi (framework)",
            poster(framework_url + route, SYNC_BODY, {**JSON, **FLOOR_AUTH}),
            framework.pid,
        ),
        (
            "gateway, streaming",
            poster(gateway.url + route + "?backend=stream", SYNC_BODY, {**JSON, **gateway.auth}),
            gateway.process.pid,
        ),
        (
            "gateway, infer",
            poster(gateway.url + route + "?backend=infer", SYNC_BODY, {**JSON, **gateway.auth}),
            gateway.process.pid,
        ),
    ]
    results = []
    for name, send, pid in targets:
        async with aiohttp.ClientSession(connector=connector(args.concurrency)) as session:
            warm = await drive(session, args.warmup, args.concurrency, send, keep=True)
            bad = {s: c for s, c in warm.statuses.items() if s != 200}
            if bad:
                raise RuntimeError(f"{name}: warm-up answered {bad}: {warm.bodies[0][:300]!r}")
            before = await backend_stats(session, backend_url)
            run = await measured(session, args.requests, args.concurrency, send, pid, backend.pid)
            after = await backend_stats(session, backend_url)
            delta = {k: after[k] - before[k] for k in after}
            delta["body_bytes"] = len(warm.bodies[-1])
            if pid == gateway.process.pid and not warm.bodies[-1].startswith(b"\x89PNG"):
                raise RuntimeError(f"{name}: the answer is not the backend's PNG")
        procs.check(name, proxy)
        procs.check(name, framework)
        procs.check(name, gateway.process)
        results.append((name, run, delta))
    return results


@dataclass
class Queued:
    submit: Run
    queued: dict[str, int]  # job id → position its 202 reported
    fill_seconds: float
    lookups: Run
    health: Run
    lookup_buckets: list[tuple[str, Run]]
    mismatched: int
    floor_submit: Run | None = None  # the framework floor's POST /queue, same load
    floor_lookups: Run | None = None  # its GET /jobs/{id}, same ids' count, one at a time
    floor_health: Run | None = None


async def async_phase(args: argparse.Namespace, gateway: Gateway) -> Queued:
    queue_url = gateway.url + "/queue"
    headers = {**JSON, **gateway.auth}
    send = poster(queue_url, QUEUE_BODY, headers)
    queued: dict[str, int] = {}

    def record(run: Run) -> None:
        for body in run.bodies:
            job = orjson.loads(body)
            if "id" in job:
                queued[job["id"]] = job["position"]

    async with aiohttp.ClientSession(connector=connector(args.async_concurrency)) as session:
        fill_started = time.perf_counter()
        warm = await drive(session, args.warmup, args.async_concurrency, send, keep=True)
        record(warm)
        submit = await measured(
            session, args.async_jobs, args.async_concurrency, send, gateway.process.pid, keep=True
        )
        record(submit)
        # Keep queueing, in batches, until the fill time is up.
        while time.perf_counter() - fill_started < args.fill_seconds:
            batch = await drive(session, 2000, args.async_concurrency, send, keep=True)
            record(batch)
        fill_seconds = time.perf_counter() - fill_started

    by_position = sorted(queued.items(), key=lambda item: item[1])
    picks = [
        by_position[round(i * (len(by_position) - 1) / (args.lookups - 1))]
        for i in range(args.lookups)
    ]
    random.Random(7).shuffle(picks)
    urls = [f"{gateway.url}/jobs/{job_id}" for job_id, _ in picks]
    async with aiohttp.ClientSession(connector=connector(1)) as session:
        await drive(session, 200, 1, getter(urls, gateway.auth))  # warm-up
        await drive(session, 200, 1, getter([gateway.url + "/health"], {}))
        lookups = await measured(
            session, len(urls), 1, getter(urls, gateway.auth), gateway.process.pid, keep=True
        )
        health = await measured(
            session, len(urls), 1, getter([gateway.url + "/health"], {}), gateway.process.pid
        )
    mismatched = 0
    buckets: dict[str, list[float]] = {"head 10%": [], "middle": [], "tail 10%": []}
    total = len(by_position)
    for (job_id, position), body, latency in zip(
        picks, lookups.bodies, lookups.latencies, strict=True
    ):
        job = orjson.loads(body)
        if job.get("id") != job_id or job.get("position") != position:
            mismatched += 1
        where = (
            "head 10%"
            if position < total * 0.1
            else "tail 10%"
            if position >= total * 0.9
            else "middle"
        )
        buckets[where].append(latency)
    return Queued(
        submit,
        queued,
        fill_seconds,
        lookups,
        health,
        [
            (name, Run(len(values), sum(values), values, Counter()))
            for name, values in buckets.items()
        ],
        mismatched,
    )


async def framework_async_phase(
    args: argparse.Namespace, url: str, pid: int, queued: Queued
) -> None:
    """The same submissions and lookups against the framework floor, into ``queued``."""
    headers = {**JSON, **FLOOR_AUTH}
    send = poster(url + "/queue", QUEUE_BODY, headers)
    async with aiohttp.ClientSession(connector=connector(args.async_concurrency)) as session:
        await drive(session, args.warmup, args.async_concurrency, send)
        queued.floor_submit = await measured(
            session, args.async_jobs, args.async_concurrency, send, pid, keep=True
        )
    ids = [orjson.loads(body)["id"] for body in queued.floor_submit.bodies]
    urls = [f"{url}/jobs/{job_id}" for job_id in ids]
    count = len(queued.lookups.latencies)
    async with aiohttp.ClientSession(connector=connector(1)) as session:
        await drive(session, 200, 1, getter(urls, FLOOR_AUTH))  # warm-up
        queued.floor_lookups = await measured(session, count, 1, getter(urls, FLOOR_AUTH), pid)
        queued.floor_health = await measured(session, count, 1, getter([url + "/health"], {}), pid)


# ---------------------------------------------------------------------------------- report


def report_sync(results: list[tuple[str, Run, dict[str, int]]], args: argparse.Namespace) -> None:
    print(
        f"\n(a) sync requests: {args.requests} measured after {args.warmup} warm-up, "
        f"concurrency {args.concurrency}, same fixed backend"
    )
    header = (
        f"{'':22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU':>11} "
        f"{'backend':>8} {'client':>8} {'non-200':>8} {'new conn':>8} {'bytes':>6}"
    )
    print(header)
    print(f"{'':22} {'':>8} {'':>8} {'':>8} {'ms/req':>11} {'ms/req':>8} {'ms/req':>8}")
    for name, run, stats in results:
        bad = sum(c for s, c in run.statuses.items() if s != 200)
        print(
            f"{name:22} {run.rate:8.0f} {run.pct(0.5):8.2f} {run.pct(0.99):8.2f} "
            f"{run.per_request_ms(run.server_cpu):11.3f} "
            f"{run.per_request_ms(run.backend_cpu):8.3f} "
            f"{run.per_request_ms(run.client_cpu):8.3f} {bad:8d} {stats['connections']:8d} "
            f"{stats['body_bytes']:6d}"
        )
    floor = results[0][1]
    floor_ms = floor.per_request_ms(floor.server_cpu)
    framework = results[1][1]
    framework_ms = framework.per_request_ms(framework.server_cpu)
    print(
        f"  fastapi (framework): {framework_ms:.3f} CPU-ms/request = "
        f"{framework_ms / floor_ms:.2f}x the proxy's {floor_ms:.3f}"
    )
    for name, run, _ in results[2:]:
        ms = run.per_request_ms(run.server_cpu)
        verdict = "meets" if ms <= 0.5 and ms <= 4 * floor_ms else "MISSES"
        print(
            f"  {name}: {ms:.3f} CPU-ms/request = {ms / floor_ms:.2f}x the proxy's "
            f"{floor_ms:.3f}, {ms / framework_ms:.2f}x the framework's; "
            f"+{ms - framework_ms:.3f} ms over the framework; "
            f"target <= 0.5 ms and <= 4x the proxy: {verdict}"
        )
    print(
        "  CPU ms/req: utime+stime of that process over the measured window / requests; "
        "'new conn': connections the backend saw opened in the window; 'bytes': response body"
    )


def report_async(queued: Queued, args: argparse.Namespace) -> None:
    submit = queued.submit
    bad = {s: c for s, c in submit.statuses.items() if s != 202}
    verdict = "meets" if submit.rate >= 4000 else "MISSES"
    print(
        f"\n(b) async submissions: POST /queue, {args.async_jobs} measured after {args.warmup} "
        f"warm-up, concurrency {args.async_concurrency}, sqlite_synchronous=FULL (default); "
        "backend down (nothing listens on its port), so every job stays queued"
    )
    print(
        f"  {submit.rate:8.0f} submissions/s (202s)   p50 {submit.pct(0.5):.2f} ms   "
        f"p99 {submit.pct(0.99):.2f} ms   "
        f"gateway CPU {submit.per_request_ms(submit.server_cpu):.3f} ms/submission   "
        f"client CPU {submit.per_request_ms(submit.client_cpu):.3f} ms   "
        f"non-202: {bad or 0}"
    )
    if queued.floor_submit is not None:
        floor = queued.floor_submit
        print(
            f"  framework floor (fastapi_floor.py, same load, nothing stored): "
            f"{floor.rate:8.0f} submissions/s   "
            f"CPU {floor.per_request_ms(floor.server_cpu):.3f} ms/submission; "
            f"gateway/floor rate {submit.rate / floor.rate:.2f}"
        )
    print(f"  target >= 4,000 submissions/s: {verdict}")
    lookups, health = queued.lookups, queued.health
    total = len(queued.queued)
    print(
        f"\n(c) position lookups: {total:,} jobs queued over HTTP in {queued.fill_seconds:.1f} s "
        f"(target scenario: ~100,000); {len(lookups.latencies)} GET /jobs/{{id}} one at a time, "
        "spread evenly over the queue"
    )
    print(f"{'':26} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'CPU ms/req':>11}")
    rows = [("GET /jobs/{id}", lookups), *[(f"  {n}", r) for n, r in queued.lookup_buckets]]
    rows.append(("GET /health (HTTP floor)", health))
    if queued.floor_lookups is not None and queued.floor_health is not None:
        rows.append(("framework GET /jobs/{id}", queued.floor_lookups))
        rows.append(("framework GET /health", queued.floor_health))
    for name, run in rows:
        cpu = f"{run.per_request_ms(run.server_cpu):11.3f}" if run.server_cpu else f"{'':11}"
        print(
            f"{name:26} {run.pct(0.5):8.3f} {run.pct(0.99):8.3f} "
            f"{statistics.fmean(run.latencies) * 1000:8.3f} {cpu}"
        )
    print(
        f"  answers whose position differs from the 202's: {queued.mismatched}; "
        f"lookup minus /health, p50: {lookups.pct(0.5) - health.pct(0.5):.3f} ms"
    )
    p99, health_p99 = lookups.pct(0.99), health.pct(0.99)
    verdict = "meets" if p99 < 0.6 and p99 <= 2 * health_p99 else "MISSES"
    print(
        f"  target p99 < 0.6 ms and <= 2x /health's p99 ({health_p99:.3f} ms): "
        f"p99 {p99:.3f} ms = {p99 / health_p99:.2f}x: {verdict}"
    )


# ------------------------------------------------------------------------------------ main


async def run_all(args: argparse.Namespace, procs: Processes, root: Path) -> None:
    backend_port, proxy_port, dead_port = free_port(), free_port(), free_port()
    framework_port = free_port()
    framework_url = f"http://127.0.0.1:{framework_port}"
    backend_url = f"http://127.0.0.1:{backend_port}"
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    backend = procs.start(
        "fixed-backend",
        [sys.executable, str(BENCH / "fixed_backend.py"), "--port", str(backend_port)],
    )
    proxy = procs.start(
        "proxy",
        [sys.executable, str(BENCH / "passthrough_proxy.py"), "--port", str(proxy_port),
         "--backend", backend_url],
    )  # fmt: skip
    framework = procs.start(
        "fastapi-floor",
        [sys.executable, str(BENCH / "fastapi_floor.py"), "--port", str(framework_port),
         "--backend", backend_url],
    )  # fmt: skip
    sync_config = gateway_config(
        [
            {"id": "fixed-stream", "endpoint": backend_url, "type": "stream", "streaming": True},
            {"id": "fixed-infer", "endpoint": backend_url, "type": "infer", "streaming": False},
        ]
    )
    dead_url = f"http://127.0.0.1:{dead_port}"
    async_config = gateway_config(
        [{"id": "down", "endpoint": dead_url, "type": "torch", "streaming": True}]
    )
    sync_dir, sync_cfg = prepare_gateway(root, "gateway-sync", sync_config)
    async_dir, async_cfg = prepare_gateway(root, "gateway-async", async_config)
    keys = await asyncio.gather(
        asyncio.to_thread(create_key, sync_cfg, sync_dir),
        asyncio.to_thread(create_key, async_cfg, async_dir),
    )
    sync_gw = start_gateway(procs, "gateway-sync", sync_cfg, sync_dir, keys[0])
    async_gw = start_gateway(procs, "gateway-async", async_cfg, async_dir, keys[1])

    async with aiohttp.ClientSession() as session:
        await wait_for(session, backend_url + "/v2/health/ready", 200,
                       lambda: procs.check("fixed-backend", backend))  # fmt: skip
        await wait_for(session, proxy_url + "/", 405, lambda: procs.check("proxy", proxy))
        await wait_for(session, framework_url + "/health", 200,
                       lambda: procs.check("fastapi-floor", framework))  # fmt: skip
        await wait_for(session, sync_gw.url + "/ready", 200,
                       lambda: procs.check("gateway-sync", sync_gw.process))  # fmt: skip
        # Ready answers 503 once the probe has found the async gateway's backend down.
        await wait_for(session, async_gw.url + "/ready", 503,
                       lambda: procs.check("gateway-async", async_gw.process))  # fmt: skip

    results = await sync_phase(
        args, procs, proxy_url, proxy, framework_url, framework, sync_gw, backend, backend_url
    )
    report_sync(results, args)
    # The sync gateway is done: stop it so that it takes no CPU from the async phase.
    sync_gw.process.terminate()
    queued = await async_phase(args, async_gw)
    procs.check("gateway-async", async_gw.process)
    await framework_async_phase(args, framework_url, framework.pid, queued)
    report_async(queued, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--async-jobs", type=int, default=3000)
    parser.add_argument("--async-concurrency", type=int, default=32)
    parser.add_argument("--fill-seconds", type=float, default=20.0)
    parser.add_argument("--lookups", type=int, default=2000)
    args = parser.parse_args()
    if args.lookups < 2 or min(args.requests, args.warmup, args.async_jobs) < 1:
        parser.error("--lookups must be at least 2, and the request counts at least 1")

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; load average before: {load}"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as scratch:
        root = Path(scratch)
        procs = Processes(root)
        try:
            try:
                import uvloop
            except ImportError:
                asyncio.run(run_all(args, procs, root))
            else:
                uvloop.run(run_all(args, procs, root))
        finally:
            procs.stop_all()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\ntotal {time.monotonic() - started:.0f} s; load average after: {load}")


if __name__ == "__main__":
    main()

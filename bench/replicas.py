"""N gateway replicas on one Redis (issue 12), measured side by side in one run.

Everything is real: a ``redis-server`` this script starts on a free port (AOF,
``appendfsync always``, as docs/OPERATIONS.md asks), ``render-gateway serve`` processes with
their own data dirs and one ``[gateway.shared] url`` (plus a shared ``[gateway.metering] url``,
``[gateway.audit] cas_url`` and ``[gateway.stores] assets``, so the replicas agree), and the
fixed-response KServe v2 backend (``bench/fixed_backend.py``). Replicas are added one at a
time (1, then 2, then 3); the client spreads requests round-robin over the running ones.

(1) Throughput through 1, 2, 3 replicas: async submissions/s (``POST /queue``, 202; the model
    ``parked`` is served only by a backend where nothing listens, so every job stays queued)
    and sync requests/s (``POST /image/sd/tiny/t2i`` through the fixed backend), each for a
    fixed time at a fixed concurrency, with the CPU each process used in the window (utime +
    stime, as % of one core).
(2) Redis commands per submission: the ``INFO commandstats`` delta over the async window divided
    by the 202s, less what the idle replicas issue on their own (measured just before, same
    replicas, scaled to the window); and per job completed end to end (``model tiny``: queued,
    claimed, run on the fixed backend, finished, metered). Commands run inside a Lua script
    are counted by Redis too: the ``EVALSHA`` rows are the round trips that carry scripts.
(3) Position lookups at depth: the Redis job store filled straight through its real submit
    script (``open_redis_job_store``) to ``--depth`` queued jobs over the three lanes, then
    ``position(id)`` for random ids, one at a time, next to ``LaneQueue.position`` at the same
    depth (what the SQLite job store answers from: its queue order is kept in memory); and
    ``GET /jobs/{id}`` through a replica on that Redis, next to ``GET /health``.

    python bench/replicas.py [--seconds 5] [--concurrency 32] [--depth 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import redis

from gateway_overhead import (
    BENCH,
    CLI,
    ENV,
    JSON,
    SYNC_BODY,
    Processes,
    connector,
    cpu_seconds,
    free_port,
    wait_for,
)
from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job
from render_gateway.core.lanes import Lane, LaneQueue
from render_gateway.stores.redis_jobs import open_redis_job_store

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PARKED = {"modality": "image", "family": "sd", "model": "parked", "task": "t2i", "prompt": "x"}
TINY = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": "x"}
LANE_WEIGHTS = {Lane.high: 0.2, Lane.normal: 0.5, Lane.low: 0.3}  # as bench/queue_positions.py
CUSTOMER = "bench"


# --------------------------------------------------------------------------------- set-up


def start_redis(procs: Processes, directory: Path) -> tuple[str, int, subprocess.Popen[bytes]]:
    """redis-server as tests/support/redis_server.py starts it (bench/ does not import tests/):
    AOF with ``appendfsync always``, no RDB, 127.0.0.1 on a free port; waits for PING."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    process = procs.start(
        "redis",
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--appendonly", "yes", "--appendfsync", "always", "--save", "",
         "--daemonize", "no", "--protected-mode", "yes"],
    )  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 20
    while True:
        procs.check("redis", process)
        try:
            if client.ping():
                break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    return f"redis://127.0.0.1:{port}/0", port, process


def replica_config(
    redis_url: str, root: Path, backend_url: str, dead_url: str, first: Path | None = None
) -> str:
    """One config for every replica; with ``first`` (the first replica's data dir), the secret
    files it created on its first start, which the other replicas must share (they refuse to
    start on their own: cluster_agreement)."""
    secrets = ["", "", ""]
    if first is not None:
        secrets = [
            f'asset_url_secret_file = "{first}/asset_url_secret"',
            f'key_file = "{first}/audit/log.key"',
            f'[gateway.webhooks]\nsecret_file = "{first}/webhook_secret"',
        ]
    return f"""
[gateway]
local_demo_worker = false
max_queued_jobs = 10000000
drain_seconds = 1
{secrets[0]}

[gateway.shared]
url = "{redis_url}"

[gateway.metering]
url = "chdb://{root}/usage.chdb"

[gateway.audit]
cas_url = "file://{root}/cas"
{secrets[1]}

{secrets[2]}

[gateway.stores]
assets = "file://{root}/assets"

[gateway.plans.default]
rate_capacity = 1e9
rate_refill_per_second = 1e9
max_queued_jobs = 10000000

[[gateway.models]]
modality = "image"
family = "sd"
model = "tiny"
tasks = ["t2i"]

[[gateway.models]]
modality = "image"
family = "sd"
model = "parked"
tasks = ["t2i"]

[[gateway.backends]]
id = "fixed"
endpoint = "{backend_url}"
family = "sd"
models = {{ tiny = "tiny" }}
capacity = 64
type = "infer"
streaming = false

[[gateway.backends]]
id = "down"
endpoint = "{dead_url}"
family = "sd"
models = {{ parked = "parked" }}
capacity = 64
type = "torch"
streaming = true
"""


@dataclass
class Replica:
    name: str
    url: str
    process: subprocess.Popen[bytes]


def start_replica(procs: Processes, root: Path, number: int, config_path: Path) -> Replica:
    name = f"replica-{number}"
    data_dir = root / name
    data_dir.mkdir(mode=0o700)
    port = free_port()
    process = procs.start(
        name,
        [*CLI, "serve", "--config", str(config_path), "--data-dir", str(data_dir),
         "--port", str(port), "--log-level", "warning"],
    )  # fmt: skip
    return Replica(name, f"http://127.0.0.1:{port}", process)


def create_key(config_path: Path, data_dir: Path) -> str:
    """The benchmark customer's key, made by the real CLI in the shared key store."""
    result = subprocess.run(
        [*CLI, "keys", "create", "--customer", CUSTOMER, "--config", str(config_path),
         "--data-dir", str(data_dir)],
        capture_output=True, check=True, timeout=120, env=ENV,
    )  # fmt: skip
    return result.stdout.decode().strip().splitlines()[-1]


# ---------------------------------------------------------------------------------- load


@dataclass
class Window:
    """One timed load window: what the client saw and what each process spent."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)  # process → CPU seconds in the window
    bodies: list[bytes] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def machine_busy_seconds() -> float:
    """CPU seconds every core spent busy since boot, from /proc/stat (all processes)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class Meter:
    """CPU seconds of every process of the run (and of this client) between two reads."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def read(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        out["client"] = time.process_time()
        out["machine"] = machine_busy_seconds()
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: after[name] - before[name] for name in after}


async def drive(
    session: aiohttp.ClientSession,
    urls: list[str],
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    seconds: float | None = None,
    count: int | None = None,
    keep: bool = False,
) -> Window:
    """POST ``body`` round-robin over ``urls`` from ``concurrency`` workers, for ``seconds``
    or ``count`` requests."""
    window = Window()
    numbers = iter(range(count if count is not None else 1 << 62))
    started = time.perf_counter()
    deadline = started + seconds if seconds is not None else float("inf")

    async def worker() -> None:
        for n in numbers:
            if time.perf_counter() >= deadline:
                return
            sent = time.perf_counter()
            async with session.post(urls[n % len(urls)], data=body, headers=headers) as reply:
                answer = await reply.read()
                window.statuses[reply.status] += 1
            window.latencies.append(time.perf_counter() - sent)
            if keep:
                window.bodies.append(answer)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    window.seconds = time.perf_counter() - started
    return window


def commandstats(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


def own_calls(delta: Counter[str]) -> Counter[str]:
    """The delta less the INFO calls this script made to read it."""
    delta = Counter(delta)
    delta["info"] -= 1
    return +delta


async def quiet(client: redis.Redis, below_per_s: float = 150.0, within: float = 20.0) -> None:
    """Wait (at most ``within`` s) until Redis runs fewer than ``below_per_s`` client commands a
    second: the background work a load window leaves (budget settlements) has drained."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = int(client.info("stats")["total_commands_processed"])
        await asyncio.sleep(0.5)
        if int(client.info("stats")["total_commands_processed"]) - before < below_per_s / 2:
            return


async def idle_rate(client: redis.Redis, seconds: float) -> tuple[Counter[str], float]:
    """Commands the running replicas issue on their own (schedulers, leases, probes)."""
    before = commandstats(client)
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    delta = own_calls(commandstats(client) - before)
    return delta, time.perf_counter() - started


SENTINEL = "replicas-bench-monitor-stop"


@dataclass
class RoundTrips:
    """Commands seen by MONITOR: sent by a client (each one a round trip, or part of a
    pipeline) or run inside a Lua script (no round trip of its own)."""

    client: Counter[str] = field(default_factory=Counter)
    lua: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    connections: int = 0  # connections Redis accepted meanwhile (total_connections_received)


def script_names() -> dict[str, str]:
    """SHA1 prefix → ``module.NAME`` of every Lua script text in the Redis stores, so that an
    EVALSHA seen by MONITOR says which script it ran."""
    names = {}
    for module_name in ("backend_slots", "budgets", "events", "jobs", "keys", "leases", "limits",
                        "usage_log", "webhooks"):  # fmt: skip
        module = importlib.import_module(f"render_gateway.stores.redis_{module_name}")
        for name, value in vars(module).items():
            if isinstance(value, str) and "redis.call" in value:
                sha = hashlib.sha1(value.encode()).hexdigest()[:8]
                names[sha] = f"{module_name}.{name.strip('_').lower()}"
    return names


SCRIPTS = script_names()


def _monitor(url: str, started: threading.Event, into: RoundTrips) -> None:
    with redis.Redis.from_url(url).monitor() as monitor:  # type: ignore[no-untyped-call]
        started.set()
        while True:
            line = monitor.connection.read_response()
            text = line.decode(errors="replace") if isinstance(line, bytes) else str(line)
            if SENTINEL in text:
                return
            parts = text.split(" ", 4)  # time, "[db", "client]", "command", args
            if len(parts) < 4:
                continue
            command = parts[3].strip('"').lower()
            if command == "evalsha" and len(parts) > 4:
                sha = parts[4][1:9]
                command = f"evalsha {SCRIPTS.get(sha, sha)}"
            (into.lua if parts[2] == "lua]" else into.client)[command] += 1


async def monitored(url: str, work: Awaitable[object] | None, seconds: float = 0.0) -> RoundTrips:
    """What Redis ran while ``work`` ran (or for ``seconds`` when it is None), by MONITOR."""
    into, started = RoundTrips(), threading.Event()
    thread = threading.Thread(target=_monitor, args=(url, started, into), daemon=True)
    thread.start()
    await asyncio.to_thread(started.wait, 10)
    await asyncio.sleep(0.1)
    stopper = redis.Redis.from_url(url)
    connections = int(stopper.info("stats")["total_connections_received"])
    t0 = time.perf_counter()
    if work is not None:
        await work
    else:
        await asyncio.sleep(seconds)
    into.seconds = time.perf_counter() - t0
    into.connections = int(stopper.info("stats")["total_connections_received"]) - connections
    stopper.echo(SENTINEL)
    stopper.close()
    await asyncio.to_thread(thread.join, 60)
    into.client["echo"] -= 1
    into.client["info"] -= 2
    into.client = +into.client
    return into


def net(
    delta: Counter[str], idle: Counter[str], idle_s: float, window_s: float
) -> dict[str, float]:
    scale = window_s / idle_s
    names = set(delta) | set(idle)
    return {n: delta.get(n, 0) - idle.get(n, 0) * scale for n in names}


# ---------------------------------------------------------------------------------- phases


@dataclass
class Step:
    replicas: int
    submit: Window
    sync: Window
    submit_calls: Counter[str]
    idle_calls: Counter[str]
    idle_seconds: float
    trips: RoundTrips
    idle_trips: RoundTrips
    trips_submissions: int
    sync_trips: RoundTrips
    sync_requests: int


async def throughput_step(
    args: argparse.Namespace,
    replicas: list[Replica],
    headers: dict[str, str],
    meter: Meter,
    client: redis.Redis,
) -> Step:
    queue_urls = [r.url + "/queue" for r in replicas]
    sync_urls = [r.url + "/image/sd/tiny/t2i" for r in replicas]
    parked = orjson.dumps(PARKED)
    async with aiohttp.ClientSession(connector=connector(args.concurrency)) as session:
        warm = await drive(session, queue_urls, parked, headers, args.concurrency,
                           count=args.concurrency * 10, keep=True)  # fmt: skip
        check(warm, 202, "POST /queue warm-up")
        # The async figures first, once the budget settlements the last step's sync requests
        # left behind have drained (they would swamp the idle rate subtracted below).
        await quiet(client)
        idle, idle_s = await idle_rate(client, args.idle_seconds)
        stats0, cpu0 = commandstats(client), meter.read()
        submit = await drive(session, queue_urls, parked, headers, args.concurrency,
                             seconds=args.seconds)  # fmt: skip
        cpu1, stats1 = meter.read(), commandstats(client)
        submit.cpu = Meter.delta(cpu0, cpu1)
        await quiet(client)
        idle_trips = await monitored(args.redis_url, None, args.idle_seconds)
        done: list[Window] = []

        async def submit_some() -> None:
            done.append(await drive(session, queue_urls, parked, headers, args.concurrency,
                                    count=args.monitor_submissions))  # fmt: skip

        trips = await monitored(args.redis_url, submit_some())
        n = done[0].statuses[202]
        warm = await drive(session, sync_urls, SYNC_BODY, headers, args.concurrency,
                           count=args.concurrency * 10, keep=True)  # fmt: skip
        check(warm, 200, "sync warm-up")
        cpu0 = meter.read()
        sync = await drive(session, sync_urls, SYNC_BODY, headers, args.concurrency,
                           seconds=args.seconds)  # fmt: skip
        sync.cpu = Meter.delta(cpu0, meter.read())
        await quiet(client)
        sync_done: list[Window] = []

        async def sync_some() -> None:
            window = await drive(session, sync_urls, SYNC_BODY, headers, args.concurrency,
                                 count=args.monitor_submissions)  # fmt: skip
            sync_done.append(window)

        sync_trips = await monitored(args.redis_url, sync_some())
        # what the sync requests leave behind (settlements) is Redis work they cause too
        sync_tail = await monitored(args.redis_url, quiet(client))
        sync_trips.client.update(sync_tail.client)
        sync_trips.lua.update(sync_tail.lua)
        sync_trips.connections += sync_tail.connections
        sync_trips.seconds += sync_tail.seconds
    return Step(len(replicas), submit, sync, own_calls(stats1 - stats0), idle, idle_s,
                trips, idle_trips, n, sync_trips, sync_done[0].statuses[200])  # fmt: skip


def check(window: Window, status: int, what: str) -> None:
    bad = {s: c for s, c in window.statuses.items() if s != status}
    if bad:
        sample = next((b for b in window.bodies if not b.startswith(b'{"id"')), b"")
        raise RuntimeError(f"{what}: answered {bad}: {sample[:300]!r}")


@dataclass
class EndToEnd:
    jobs: int
    seconds: float
    calls: Counter[str]
    idle: Counter[str]
    idle_seconds: float
    polls: int
    trips: RoundTrips
    idle_trips: RoundTrips


async def end_to_end(
    args: argparse.Namespace, replicas: list[Replica], headers: dict[str, str], client: redis.Redis
) -> EndToEnd:
    """``--e2e-jobs`` jobs of model tiny through the replicas, run to completion. Run before any
    parked job is queued: the claim takes the head of the highest lane or nothing, so a parked
    job at the head would hold the tiny ones back. Completion is watched with one ZCARD of the
    unsettled set per poll (counted, and taken off the figures)."""
    queue_urls = [r.url + "/queue" for r in replicas]
    idle, idle_s = await idle_rate(client, args.idle_seconds)
    idle_trips = await monitored(args.redis_url, None, args.idle_seconds)
    polls = 0
    bodies: list[bytes] = []

    async def run_jobs() -> None:
        nonlocal polls
        async with aiohttp.ClientSession(connector=connector(args.concurrency)) as session:
            window = await drive(session, queue_urls, orjson.dumps(TINY), headers,
                                 args.concurrency, count=args.e2e_jobs, keep=True)  # fmt: skip
        check(window, 202, "POST /queue (tiny)")
        bodies.extend(window.bodies)
        deadline = time.monotonic() + 120
        while True:
            polls += 1
            if client.zcard("render:jobs:unsettled") == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("end-to-end jobs did not finish within 120 s")
            await asyncio.sleep(0.1)

    before = commandstats(client)
    started = time.perf_counter()
    trips = await monitored(args.redis_url, run_jobs())
    seconds = time.perf_counter() - started
    calls = own_calls(commandstats(client) - before)
    calls["zcard"] -= polls
    calls["echo"] -= 1
    calls["monitor"] -= 1
    trips.client["zcard"] -= polls
    ids = [orjson.loads(b)["id"] for b in bodies]
    statuses = Counter(client.hget(f"render:jobs:job:{i}", "status") for i in ids)
    if statuses != Counter({b"complete": len(ids)}):
        raise RuntimeError(f"end-to-end jobs ended {dict(statuses)}")
    return EndToEnd(len(ids), seconds, +calls, idle, idle_s, polls, trips, idle_trips)


@dataclass
class Depth:
    depth: dict[str, int]
    fill_seconds: float
    filled: int
    redis_ns: list[int]
    lanequeue_ns: list[int]
    http: Window
    health: Window
    mismatched: int


async def positions_at_depth(
    args: argparse.Namespace, redis_url: str, replica: Replica, headers: dict[str, str]
) -> Depth:
    rng = random.Random(1)
    store = open_redis_job_store(redis_url)
    await store.open()
    try:
        already = sum((await store.depth()).values())
        to_fill = max(0, args.depth - already)
        lanes = rng.choices(list(LANE_WEIGHTS), weights=list(LANE_WEIGHTS.values()), k=to_fill)
        ids = [new_job_id() for _ in range(to_fill)]
        numbers = iter(range(to_fill))

        async def submitter() -> None:
            for n in numbers:
                job = Job(ids[n], CUSTOMER, lanes[n], dict(PARKED), time.time())
                await store.submit(job, max_queued_for_customer=1 << 40, max_queued_total=1 << 40)

        started = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(args.fill_concurrency)))
        fill_seconds = time.perf_counter() - started
        depth = await store.depth()

        picks = rng.choices(ids, k=args.lookups)
        clock = time.perf_counter_ns
        redis_ns = []
        for job_id in picks[:200]:  # warm-up: the script cached, the connection open
            await store.position(job_id)
        for job_id in picks:
            t0 = clock()
            await store.position(job_id)
            redis_ns.append(clock() - t0)

        # The same depth in a LaneQueue, where the SQLite job store answers position() from.
        queue = LaneQueue()
        weights = list(LANE_WEIGHTS.values())
        for n, lane in enumerate(rng.choices(list(LANE_WEIGHTS), weights, k=sum(depth.values()))):
            queue.push(f"job-{n:07d}", lane)
        lq_ids = [f"job-{n:07d}" for n in rng.choices(range(len(queue)), k=args.lookups)]
        lanequeue_ns = []
        for job_id in lq_ids:
            t0 = clock()
            queue.position(job_id)
            lanequeue_ns.append(clock() - t0)

        http_picks = picks[: args.http_lookups]
        expected = {job_id: await store.position(job_id) for job_id in http_picks}
    finally:
        await store.close()

    mismatched = 0
    async with aiohttp.ClientSession(connector=connector(1)) as session:

        async def get(url: str, auth: dict[str, str]) -> tuple[float, bytes, int]:
            t0 = time.perf_counter()
            async with session.get(url, headers=auth) as reply:
                body = await reply.read()
                return time.perf_counter() - t0, body, reply.status

        for job_id in http_picks[:100]:
            await get(f"{replica.url}/jobs/{job_id}", headers)
        http, health = Window(), Window()
        for job_id in http_picks:
            seconds, body, status = await get(f"{replica.url}/jobs/{job_id}", headers)
            http.latencies.append(seconds)
            http.statuses[status] += 1
            if orjson.loads(body).get("position") != expected[job_id]:
                mismatched += 1
        for _ in http_picks:
            seconds, _, status = await get(f"{replica.url}/health", {})
            health.latencies.append(seconds)
            health.statuses[status] += 1
    return Depth(depth, fill_seconds, to_fill, redis_ns, lanequeue_ns, http, health, mismatched)


# ---------------------------------------------------------------------------------- report


def cpu_row(window: Window) -> str:
    """Each process's CPU in the window as % of one core (100% = one core busy)."""
    parts = []
    ours = 0.0
    for name, seconds in window.cpu.items():
        if name == "machine":
            continue
        ours += seconds
        parts.append(f"{name.replace('replica-', 'r')} {seconds / window.seconds * 100:.0f}%")
    others = max(0.0, window.cpu["machine"] - ours) / window.seconds * 100
    total = ours / window.seconds * 100
    return (
        f"{', '.join(parts)}; ours {total:.0f}%, other processes {others:.0f}% "
        f"(of {os.cpu_count()}00%)"
    )


def report_throughput(steps: list[Step], args: argparse.Namespace) -> None:
    print(
        f"\n(1) throughput: {args.seconds:.0f} s per window, concurrency {args.concurrency}, "
        "client round-robin over the replicas running"
    )
    header = (
        f"{'':28} {'replicas':>8} {'req/s':>8} {'vs 1':>6} {'p50 ms':>8} {'p99 ms':>8} {'bad':>5}"
    )
    print(header)
    for label, windows, ok in (
        ("async POST /queue (202)", [s.submit for s in steps], 202),
        ("sync POST /image/sd/tiny/t2i", [s.sync for s in steps], 200),
    ):
        base = windows[0].rate
        for step, w in zip(steps, windows, strict=True):
            bad = sum(c for s, c in w.statuses.items() if s != ok)
            print(
                f"{label:28} {step.replicas:8d} {w.rate:8.0f} {w.rate / base:5.2f}x "
                f"{w.pct(0.5):8.2f} {w.pct(0.99):8.2f} {bad:5d}"
            )
            print(f"{'':28}   CPU: {cpu_row(w)}")
            label = ""


def per_command(calls: dict[str, float], n: int, top: int = 12) -> str:
    rows = sorted(((v / n, k) for k, v in calls.items() if v / n >= 0.005), reverse=True)
    return ", ".join(f"{k} {v:.2f}" for v, k in rows[:top])


def report_commands(steps: list[Step], e2e: EndToEnd) -> None:
    print("\n(2) Redis commands (INFO commandstats; calls inside Lua scripts counted too)")
    for step in steps:
        n = step.submit.statuses[202]
        gross = sum(step.submit_calls.values())
        netted = net(step.submit_calls, step.idle_calls, step.idle_seconds, step.submit.seconds)
        idle_per_s = sum(step.idle_calls.values()) / step.idle_seconds
        script_calls = netted.get("evalsha", 0) + netted.get("eval", 0)
        print(
            f"  {step.replicas} replica(s): {n} submissions: {gross / n:.2f} commands each gross, "
            f"{sum(netted.values()) / n:.2f} net of the idle replicas' {idle_per_s:.0f}/s; "
            f"scripts (EVALSHA) {script_calls / n:.2f}/submission"
        )
        print(f"     net per submission: {per_command(netted, n)}")
        print(f"     MONITOR, {trips_line(step.trips, step.idle_trips, step.trips_submissions)}")
        print(
            f"     MONITOR, sync requests and the settlements after them, "
            f"{trips_line(step.sync_trips, step.idle_trips, step.sync_requests)}"
        )
    netted = net(e2e.calls, e2e.idle, e2e.idle_seconds, e2e.seconds)
    print(
        f"  end to end (1 replica): {e2e.jobs} tiny jobs submitted, run and finished in "
        f"{e2e.seconds:.1f} s: "
        f"{sum(e2e.calls.values()) / e2e.jobs:.1f} commands per job gross, "
        f"{sum(netted.values()) / e2e.jobs:.1f} net of idle "
        f"({sum(e2e.idle.values()) / e2e.idle_seconds:.0f}/s); this script's "
        f"{e2e.polls} ZCARD polls taken off"
    )
    print(f"     net per job: {per_command(netted, e2e.jobs, top=16)}")
    print(f"     MONITOR, {trips_line(e2e.trips, e2e.idle_trips, e2e.jobs)}")


def trips_line(trips: RoundTrips, idle: RoundTrips, n: int) -> str:
    """Round trips (commands clients sent) per item, net of the idle replicas' rate."""
    scale = trips.seconds / idle.seconds
    client = {k: trips.client.get(k, 0) - idle.client.get(k, 0) * scale
              for k in set(trips.client) | set(idle.client)}  # fmt: skip
    lua = {k: trips.lua.get(k, 0) - idle.lua.get(k, 0) * scale
           for k in set(trips.lua) | set(idle.lua)}  # fmt: skip
    return (
        f"{n} items: {sum(client.values()) / n:.2f} round trips each "
        f"(+{sum(lua.values()) / n:.2f} commands inside scripts; "
        f"{trips.connections / n:.2f} new connections each, idle "
        f"{idle.connections / idle.seconds:.1f}/s), net of idle "
        f"{sum(idle.client.values()) / idle.seconds:.0f} round trips/s: "
        f"{per_command(client, n, top=8)}\n       idle round trips/s: "
        f"{per_command(dict(idle.client), max(1, round(idle.seconds)), top=6)}"
    )


def report_depth(d: Depth, args: argparse.Namespace) -> None:
    depth = ", ".join(f"{k} {v:,}" for k, v in d.depth.items())
    print(
        f"\n(3) positions at depth: {sum(d.depth.values()):,} queued ({depth}); "
        f"{d.filled:,} filled through RedisJobStore.submit (its Lua script), "
        f"{args.fill_concurrency} concurrent, in {d.fill_seconds:.1f} s "
        f"= {d.filled / max(d.fill_seconds, 1e-9):,.0f} submits/s"
    )
    print(f"{'':34} {'calls':>7} {'p50 µs':>9} {'p99 µs':>9} {'mean µs':>9}")

    def row(name: str, samples: list[float]) -> None:
        q = statistics.quantiles(samples, n=100, method="inclusive")
        print(
            f"{name:34} {len(samples):7,} {statistics.median(samples):9.1f} {q[98]:9.1f} "
            f"{statistics.fmean(samples):9.1f}"
        )

    row("RedisJobStore.position()", [ns / 1000 for ns in d.redis_ns])
    row("LaneQueue.position() (SQLite's)", [ns / 1000 for ns in d.lanequeue_ns])
    row("GET /jobs/{id} via a replica", [s * 1e6 for s in d.http.latencies])
    row("GET /health (HTTP floor)", [s * 1e6 for s in d.health.latencies])
    bad = sum(c for s, c in d.http.statuses.items() if s != 200)
    print(f"  GET /jobs non-200: {bad}; positions differing from the store's: {d.mismatched}")


# ------------------------------------------------------------------------------------ main


async def run_all(args: argparse.Namespace, procs: Processes, root: Path) -> None:
    redis_url, _, redis_process = start_redis(procs, root / "redis")
    args.redis_url = redis_url
    client = redis.Redis.from_url(redis_url)
    version = client.info("server")["redis_version"]
    print(f"redis-server {version}, appendonly yes, appendfsync always")
    backend_port, dead_port = free_port(), free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    backend = procs.start(
        "fixed-backend",
        [sys.executable, str(BENCH / "fixed_backend.py"), "--port", str(backend_port)],
    )
    shared = root / "shared"
    shared.mkdir()
    config_path = root / "replica.toml"
    dead_url = f"http://127.0.0.1:{dead_port}"
    config_path.write_text(replica_config(redis_url, shared, backend_url, dead_url))
    key_dir = root / "cli"
    key_dir.mkdir()
    key = await asyncio.to_thread(create_key, config_path, key_dir)
    headers = {**JSON, "Authorization": f"Bearer {key}"}

    pids = {"redis": redis_process.pid, "backend": backend.pid}
    replicas: list[Replica] = []
    steps: list[Step] = []
    async with aiohttp.ClientSession() as session:
        await wait_for(session, backend_url + "/v2/health/ready", 200,
                       lambda: procs.check("fixed-backend", backend))  # fmt: skip
    e2e: EndToEnd | None = None
    for number in range(1, args.replicas + 1):
        replica = start_replica(procs, root, number, config_path)
        async with aiohttp.ClientSession() as session:
            await wait_for(session, replica.url + "/health", 200,
                           lambda r=replica: procs.check(r.name, r.process),  # type: ignore[misc]
                           within=180)  # fmt: skip
        replicas.append(replica)
        pids[replica.name] = replica.process.pid
        if e2e is None:  # before any parked job is queued (see end_to_end)
            e2e = await end_to_end(args, replicas, headers, client)
            config_path = root / "replicas.toml"
            config_path.write_text(replica_config(redis_url, shared, backend_url, dead_url,
                                                  first=root / replica.name))  # fmt: skip
        steps.append(await throughput_step(args, replicas, headers, Meter(dict(pids)), client))
        for r in replicas:
            procs.check(r.name, r.process)
    assert e2e is not None
    report_throughput(steps, args)
    report_commands(steps, e2e)
    depth = await positions_at_depth(args, redis_url, replicas[0], headers)
    report_depth(depth, args)
    for r in replicas:
        procs.check(r.name, r.process)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="each load window")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument("--e2e-jobs", type=int, default=300)
    parser.add_argument("--monitor-submissions", type=int, default=300)
    parser.add_argument("--depth", type=int, default=100_000)
    parser.add_argument("--fill-concurrency", type=int, default=64)
    parser.add_argument("--lookups", type=int, default=5000)
    parser.add_argument("--http-lookups", type=int, default=1000)
    args = parser.parse_args()
    if min(args.replicas, args.concurrency, args.e2e_jobs, args.lookups, args.http_lookups) < 1:
        parser.error("counts must be at least 1")

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
    with tempfile.TemporaryDirectory(prefix="replicas-bench-") as scratch:
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

"""The chaos scenario of issue 12, shared by ``tests/test_chaos_e2e.py`` (bounded, in ``make
test``) and ``bench/chaos.py`` (longer, ``--seconds``).

Everything is a real process: one ``redis-server`` with AOF (``appendfsync always``), two
reference workers (``render-gateway worker``), three gateway replicas (``render-gateway
serve``, every role; the singletons by lease) with their own data dirs on one ``[gateway.shared]
url`` and one shared chDB path, CAS directory and assets directory. Customers send async
(``POST /queue``) and sync traffic through every replica while a controller, every few seconds,
``kill -9``s a random replica, the metering lease's holder or a worker and starts it again; once,
it ``kill -9``s Redis and starts it again on the same port and directory.

What is checked at the end (:class:`ChaosReport`), each from an observable outside the code
under test:

* every 202'd job reached exactly one terminal state: its last poll (through any replica) is
  terminal and its event stream read from the start holds exactly one terminal event;
* no request ran on two workers at once: the workers' own logs (``run <id> started`` / ``run
  <id> ended``, a killed worker's open runs end at its kill) give each run's interval per
  worker; two intervals of one request id on different workers must not overlap;
* every finished request (a job whose view carries a usage record, a sync request answered 200)
  has exactly one row in ClickHouse (the shared chDB, opened after every replica stopped, in a
  subprocess) and exactly one attestation in the audit log (the CAS batches), and a job that
  did not run has none;
* ``render-gateway audit verify`` exits 0 and ``render-gateway reconcile`` says reconciled;
* the small budget's overshoot is at most one step per run that can be in flight (the two
  workers' slots), the bound of docs/OPERATIONS.md "Budgets" and DESIGN's invariant;
* the positions one poller read for a queued job, on whichever replica, never rose, except by
  the runs requeued ahead of it (a run lost with its replica goes back with its own admission
  number, ahead of the jobs admitted after it: stores/redis_jobs.py);
* every SSE client that reconnected with ``Last-Event-ID`` (to another replica, after its
  replica died) saw each event id once, in order.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from support.gateway import GatewayProcess, bearer, start_gateway, stop_gateway
from support.processes import CLI, OFFLINE_ENV, free_port, stop_process, wait_until_ready
from support.redis_server import RedisServer, start_redis

TERMINAL = frozenset({"complete", "error", "cancelled"})
TERMINAL_EVENTS = frozenset({"complete", "error", "cancelled"})
SLOTS = 2  # two workers, max_concurrency 1 each: the runs that can be in flight at once
CUSTOMERS = ("alice", "bob", "small")
SMALL = "small"
# What each data dir would otherwise make its own: every replica gets the first one's.
SECRETS = ("asset_url_secret", "webhook_secret", "audit/log.key")
MAX_OUTSTANDING = 5  # per customer: keeps the queue short enough to drain within the bound

CONFIG = """
[gateway]
local_demo_worker = false
drain_seconds = 1
reservation_gpu_seconds = 0.05

[gateway.shared]
url = "{redis}"

[gateway.metering]
url = "chdb://{shared}/usage.chdb"
flush_interval_seconds = 0.2

[gateway.audit]
cas_url = "file://{shared}/cas"
batch_seconds = 1

[gateway.stores]
assets = "file://{shared}/assets"

[gateway.plans.default]
rate_capacity = 10000
rate_refill_per_second = 10000

[gateway.plans.admin]
rate_capacity = 10000
rate_refill_per_second = 10000
admin = true
allow_high_priority = true

[gateway.budgets.small]
monthly_gpu_seconds = {budget}

[[gateway.backends]]
id = "w1"
endpoint = "{worker1}"
family = "sd"
models = {{ tiny = "demo" }}
capacity = 1

[[gateway.backends]]
id = "w2"
endpoint = "{worker2}"
family = "sd"
models = {{ tiny = "demo" }}
capacity = 1

[[gateway.models]]
modality = "image"
family = "sd"
model = "tiny"
tasks = ["t2i"]
"""

LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO render_gateway\.worker\.runs: "
    r"run (\S+) (started|ended)$"
)


def now() -> float:
    return time.time()


# ------------------------------------------------------------------------------- processes


@dataclass
class Worker:
    name: str
    port: int
    directory: Path
    model_dir: Path
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    kills: dict[Path, float] = field(default_factory=dict)  # log → when its process was killed

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log_path = self.directory / f"worker-{self.name}-{len(self.logs)}.log"
        self.logs.append(log_path)
        command = [*CLI, "worker", "--port", str(self.port), "--data-dir",
                   str(self.directory / "data"), "--model", f"demo={self.model_dir}"]  # fmt: skip
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT,
                env={**os.environ, **OFFLINE_ENV},
            )  # fmt: skip
        wait_until_ready(self.process, self.url + "/v2/health/ready", log_path, 180)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            self.kills[self.logs[-1]] = now()
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        self.process = None


@dataclass
class Replica:
    index: int
    port: int
    data_dir: Path
    gateway: GatewayProcess | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Event:
    at: float
    what: str


class Cluster:
    """Redis, two workers and three replicas, with what it takes to kill and restart each."""

    def __init__(self, root: Path, model_dir: Path, budget: float) -> None:
        self.root = root
        self.shared = root / "shared"
        self.shared.mkdir(parents=True, exist_ok=True)
        self.redis_dir = root / "redis"
        self.redis_port = free_port()
        self.redis: RedisServer | None = None
        self.workers = [
            Worker(f"w{i}", free_port(), root / f"worker{i}", model_dir) for i in (1, 2)
        ]
        for worker in self.workers:
            worker.directory.mkdir(parents=True, exist_ok=True)
        self.replicas = [Replica(i, free_port(), root / f"replica{i}") for i in range(3)]
        self.budget = budget
        self.config = ""
        self.admin_key = ""
        self.lock = threading.Lock()
        self.events: list[Event] = []

    def note(self, what: str) -> None:
        with self.lock:
            self.events.append(Event(now(), what))

    # -- start / stop
    def start(self) -> None:
        self.redis = start_redis(self.redis_dir, self.redis_port)
        for worker in self.workers:
            worker.start()
        self.config = CONFIG.format(
            redis=self.redis.url, shared=self.shared, budget=self.budget,
            worker1=self.workers[0].url, worker2=self.workers[1].url,
        )  # fmt: skip
        first = self.replicas[0]
        self.start_replica(first)
        assert first.gateway is not None
        self.admin_key = first.gateway.admin_key
        for replica in self.replicas[1:]:
            for name in SECRETS:
                source = first.data_dir / name
                if source.is_file():
                    (replica.data_dir / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, replica.data_dir / name)
            self.start_replica(replica)

    def start_replica(self, replica: Replica) -> None:
        # start_gateway writes gateway-<port>.log afresh: keep the previous life's log.
        previous = replica.data_dir / f"gateway-{replica.port}.log"
        if previous.exists():
            previous.rename(previous.with_suffix(f".{replica.starts}.log"))
        gateway = start_gateway(replica.data_dir, self.config, replica.port, timeout=180)
        with self.lock:
            replica.gateway = gateway
            replica.starts += 1

    def kill_replica(self, replica: Replica) -> None:
        with self.lock:
            gateway, replica.gateway = replica.gateway, None
        if gateway is not None:
            gateway.process.kill()
            gateway.process.wait()

    def kill_redis(self) -> None:
        assert self.redis is not None
        self.redis.process.kill()
        self.redis.process.wait()

    def restart_redis(self) -> None:
        self.redis = start_redis(self.redis_dir, self.redis_port)

    def live(self) -> list[Replica]:
        with self.lock:
            return [r for r in self.replicas if r.gateway is not None]

    def any_gateway(self) -> GatewayProcess:
        for replica in self.replicas:
            if replica.gateway is not None:
                return replica.gateway
        raise RuntimeError("no replica is up")

    def singleton_holder(self, role: str) -> Replica | None:
        """The replica whose process holds ``role``'s lease now (holder ids are host:pid:…)."""
        try:
            client = redis.Redis(
                host="127.0.0.1", port=self.redis_port, socket_timeout=2, decode_responses=True
            )
            holder = str(client.hget(f"render:lease:{role}", "holder") or "")
            client.close()
        except redis.RedisError:
            return None
        if not holder:
            return None
        pid = int(holder.split(":")[1])
        for replica in self.live():
            if replica.gateway is not None and replica.gateway.process.pid == pid:
                return replica
        return None

    def stop_replicas(self) -> None:
        for replica in self.replicas:
            with self.lock:
                gateway, replica.gateway = replica.gateway, None
            if gateway is not None:
                stop_gateway(gateway)

    def stop_all(self) -> None:
        self.stop_replicas()
        for worker in self.workers:
            worker.stop()
        if self.redis is not None and self.redis.process.poll() is None:
            stop_process(self.redis.process)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        replica = self.replicas[0]
        return subprocess.run(
            [*CLI, *args, "--config", str(replica.data_dir / "gateway.toml"),
             "--data-dir", str(replica.data_dir)],
            capture_output=True, text=True, timeout=timeout, env={**os.environ, **OFFLINE_ENV},
        )  # fmt: skip


# --------------------------------------------------------------------------------- traffic


@dataclass
class JobRecord:
    id: str
    customer: str
    submitted_at: float
    positions: list[tuple[float, int, int]] = field(default_factory=list)  # (t, replica, pos)
    final: dict[str, Any] | None = None
    terminal_polls: set[str] = field(default_factory=set)  # terminal statuses ever polled


@dataclass
class SseRecord:
    job_id: str
    events: list[tuple[int, str]] = field(default_factory=list)  # (id, event name)
    replicas: list[int] = field(default_factory=list)
    reconnects: int = 0
    finished: bool = False


@dataclass
class Traffic:
    keys: dict[str, str]
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    submit_retries: int = 0
    sync_answers: dict[str, int] = field(default_factory=dict)  # request id → status
    sync_codes: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    sync_lost: int = 0  # connection cut before any answer
    sse: list[SseRecord] = field(default_factory=list)
    sse_on: dict[int, int] = field(default_factory=dict)  # SSE thread → replica it reads
    lock: threading.Lock = field(default_factory=threading.Lock)

    def outstanding(self, customer: str) -> int:
        with self.lock:
            return sum(1 for j in self.jobs.values() if j.customer == customer and not j.final)

    def open_jobs(self) -> list[JobRecord]:
        with self.lock:
            return [j for j in self.jobs.values() if j.final is None]


def job_body(rng: random.Random, idempotency_key: str) -> dict[str, Any]:
    return {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
            "prompt": "a lighthouse", "steps": rng.randint(2, 4), "width": 64, "height": 64,
            "idempotency_key": idempotency_key}  # fmt: skip


def pick(cluster: Cluster, rng: random.Random, avoid: int | None = None) -> Replica | None:
    live = cluster.live()
    others = [r for r in live if r.index != avoid] or live
    return rng.choice(others) if others else None


def submitter(
    cluster: Cluster, traffic: Traffic, customer: str, stop: threading.Event, seed: int
) -> None:
    rng = random.Random(seed)
    headers = bearer(traffic.keys[customer])
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            if traffic.outstanding(customer) >= MAX_OUTSTANDING:
                time.sleep(0.1)
                continue
            body = job_body(rng, uuid.uuid4().hex)
            while not stop.is_set():  # one logical submission, retried until answered
                replica = pick(cluster, rng)
                if replica is None:
                    time.sleep(0.2)
                    continue
                try:
                    answer = client.post(replica.url + "/queue", json=body, headers=headers)
                except httpx.TransportError:
                    traffic.submit_retries += 1
                    time.sleep(0.2)
                    continue
                if answer.status_code == 202:
                    job_id = answer.json()["id"]
                    with traffic.lock:
                        traffic.jobs.setdefault(job_id, JobRecord(job_id, customer, now()))
                    break
                if answer.status_code in (502, 503):
                    traffic.submit_retries += 1
                    time.sleep(0.2)
                    continue
                with traffic.lock:
                    traffic.refusals[f"{customer} {answer.status_code}"] += 1
                time.sleep(0.5)  # e.g. the small budget's 402: try again later
                break
            time.sleep(rng.uniform(0.05, 0.3))


def sync_client(
    cluster: Cluster, traffic: Traffic, customer: str, stop: threading.Event, seed: int
) -> None:
    rng = random.Random(seed)
    headers = bearer(traffic.keys[customer])
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            replica = pick(cluster, rng)
            if replica is None:
                time.sleep(0.2)
                continue
            body = {"prompt": "a fox", "steps": rng.randint(2, 3), "width": 64, "height": 64}
            try:
                answer = client.post(replica.url + "/image/sd/tiny/t2i", json=body, headers=headers)
            except httpx.TransportError:
                with traffic.lock:
                    traffic.sync_lost += 1
                time.sleep(0.2)
                continue
            with traffic.lock:
                traffic.sync_codes[answer.status_code] += 1
                request_id = answer.headers.get("x-request-id")
                if request_id:
                    traffic.sync_answers[request_id] = answer.status_code
            time.sleep(rng.uniform(0.3, 0.8))


def poller(cluster: Cluster, traffic: Traffic, stop: threading.Event, seed: int) -> None:
    """Polls every open job through a random replica: its positions while queued, its end."""
    rng = random.Random(seed)
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            jobs = traffic.open_jobs()
            if not jobs:
                time.sleep(0.1)
                continue
            for job in jobs:
                replica = pick(cluster, rng)
                if replica is None:
                    break
                try:
                    answer = client.get(
                        f"{replica.url}/jobs/{job.id}", headers=bearer(traffic.keys[job.customer])
                    )
                except httpx.TransportError:
                    continue
                if answer.status_code != 200:
                    continue
                view = answer.json()
                with traffic.lock:
                    if view["status"] == "queued" and view.get("position") is not None:
                        job.positions.append((now(), replica.index, int(view["position"])))
                    if view["status"] in TERMINAL:
                        job.terminal_polls.add(view["status"])
                        job.final = view
            time.sleep(0.05)


def read_events(
    client: httpx.Client, url: str, headers: dict[str, str], record: SseRecord, limit: float
) -> bool:
    """Reads one SSE connection into ``record``; True once a terminal event came."""
    with client.stream("GET", url, headers=headers, timeout=httpx.Timeout(10, read=limit)) as s:
        if s.status_code != 200:
            time.sleep(0.2)
            return False
        name, event_id = None, None
        for line in s.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("id:"):
                event_id = line[3:].strip()
            elif not line and name is not None:
                if event_id is not None:
                    record.events.append((int(event_id), name))
                    if name in TERMINAL_EVENTS:
                        return True
                name, event_id = None, None
    return False


def sse_client(
    cluster: Cluster, traffic: Traffic, number: int, stop: threading.Event, seed: int
) -> None:
    """Follows one job after another; when its replica dies it reconnects to another one with
    ``Last-Event-ID`` (what a browser's EventSource does)."""
    rng = random.Random(seed)
    followed: set[str] = set()
    with httpx.Client() as client:
        while not stop.is_set():
            candidates = [j for j in traffic.open_jobs() if j.id not in followed]
            if not candidates:
                time.sleep(0.1)
                continue
            job = rng.choice(candidates)
            followed.add(job.id)
            record = SseRecord(job.id)
            with traffic.lock:
                traffic.sse.append(record)
            deadline = time.monotonic() + 120
            previous: int | None = None
            while time.monotonic() < deadline:
                replica = pick(cluster, rng, avoid=previous)
                if replica is None:
                    time.sleep(0.2)
                    continue
                headers = bearer(traffic.keys[job.customer])
                if record.events:
                    headers["Last-Event-ID"] = str(record.events[-1][0])
                record.replicas.append(replica.index)
                traffic.sse_on[number] = replica.index
                try:
                    if read_events(client, f"{replica.url}/jobs/{job.id}/events", headers,
                                   record, 30):  # fmt: skip
                        record.finished = True
                        break
                except (httpx.TransportError, httpx.StreamError):
                    pass
                record.reconnects += 1
                previous = replica.index
                time.sleep(0.1)
            traffic.sse_on.pop(number, None)


def controller(
    cluster: Cluster, traffic: Traffic, stop: threading.Event, seconds: float, seed: int,
    every: float,
) -> None:  # fmt: skip
    """Every ``every`` seconds a kill -9 and a restart; once, halfway, Redis."""
    rng = random.Random(seed)
    started = time.monotonic()
    redis_done = False
    actions = ["replica", "holder", "worker"]
    turn = 0
    while not stop.wait(every):
        if time.monotonic() - started > seconds:
            break
        if not redis_done and time.monotonic() - started > seconds / 2:
            redis_done = True
            cluster.note("kill -9 redis")
            cluster.kill_redis()
            time.sleep(2)
            cluster.restart_redis()
            cluster.note("redis restarted")
            continue
        action = actions[turn % len(actions)]
        turn += 1
        if action == "worker":
            worker = rng.choice(cluster.workers)
            cluster.note(f"kill -9 worker {worker.name}")
            worker.kill()
            time.sleep(1)
            worker.start()
            cluster.note(f"worker {worker.name} restarted")
            continue
        victim = cluster.singleton_holder("metering") if action == "holder" else None
        if victim is None:
            # Prefer a replica an SSE client is reading from: its client must resume elsewhere.
            streamed = set(traffic.sse_on.values())
            live = cluster.live()
            preferred = [r for r in live if r.index in streamed] or live
            if not preferred:
                continue
            victim = rng.choice(preferred)
            action = "replica"
        cluster.note(f"kill -9 replica {victim.index} ({action})")
        cluster.kill_replica(victim)
        time.sleep(1)
        cluster.start_replica(victim)
        cluster.note(f"replica {victim.index} restarted")


# -------------------------------------------------------------------------------- checking


def worker_runs(cluster: Cluster) -> dict[str, list[tuple[str, float, float]]]:
    """Request id → (worker, start, end) of every run the workers' logs show."""
    runs: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for worker in cluster.workers:
        for log_path in worker.logs:
            open_runs: dict[str, float] = {}
            for line in log_path.read_text(errors="replace").splitlines():
                match = LOG_LINE.match(line)
                if not match:
                    continue
                stamp = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if match[3] == "started":
                    open_runs[match[2]] = stamp
                elif match[2] in open_runs:
                    runs[match[2]].append((worker.name, open_runs.pop(match[2]), stamp))
            # A killed worker's runs ended with it; one still up has none open by now.
            end = worker.kills.get(log_path, now())
            for request_id, start in open_runs.items():
                runs[request_id].append((worker.name, start, end))
    return runs


def overlapping_runs(runs: dict[str, list[tuple[str, float, float]]]) -> list[str]:
    found = []
    for request_id, intervals in runs.items():
        for i, (w1, s1, e1) in enumerate(intervals):
            for w2, s2, e2 in intervals[i + 1 :]:
                if w1 != w2 and s1 < e2 and s2 < e1:
                    found.append(f"{request_id}: {w1} {s1:.3f}-{e1:.3f} and {w2} {s2:.3f}-{e2:.3f}")
    return found


STORE_SCRIPT = """
import json, sys
from render_gateway.metering.store import open_usage_store
from render_gateway.audit.reconcile import _cold_events
from render_gateway.metering.queries import TimeRange
from render_gateway.stores.objects import open_object_store
import datetime as dt
store = open_usage_store(sys.argv[1])
hot = store.rows("SELECT job_id, request_id, CAST(customer_id AS String), gpu_seconds,"
                 " num_steps, CAST(status AS String) FROM inference_events")
store.close()
today = dt.datetime.now(dt.UTC)
window = TimeRange.parse((today - dt.timedelta(days=1)).isoformat(),
                         (today + dt.timedelta(days=1)).isoformat(), today)
cold = _cold_events(open_object_store(sys.argv[2]), window, ["job_id", "request_id"], None)
print(json.dumps({"hot": [list(r) for r in hot], "cold": cold.to_pylist()}, default=str))
"""


def processes_holding(directory: Path) -> list[str]:
    """``pid cmdline`` of every process with a file under ``directory`` open (from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            targets = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            if any(t.startswith(str(directory)) for t in targets):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
                found.append(f"{proc.name} {command}")
        except OSError:
            continue
    return found


def read_stores(cluster: Cluster) -> dict[str, Any]:
    """Every usage row in the shared chDB and every attestation in the CAS, read by a separate
    process (the embedded chDB opens one path per process: never inside pytest's)."""
    command = [sys.executable, "-c", STORE_SCRIPT, f"chdb://{cluster.shared}/usage.chdb",
               f"file://{cluster.shared}/cas"]  # fmt: skip
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=120,
            env={**os.environ, **OFFLINE_ENV},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        # Seen once in a full run (the same read took 1 s afterwards): say who holds the
        # chDB directory, then read once more; a second stall fails the run with that story.
        holders = processes_holding(cluster.shared / "usage.chdb")
        print(f"reading the stores stalled for 120 s; processes holding usage.chdb: {holders}")
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=180,
            env={**os.environ, **OFFLINE_ENV},
        )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"reading the stores failed: {result.stderr[-3000:]}")
    loaded: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def full_event_log(
    cluster: Cluster, traffic: Traffic, job: JobRecord, client: httpx.Client
) -> list[tuple[int, str]]:
    """The job's whole event log, read from the start through some replica. A log without
    its terminal event is read again for up to 30 s: an end whose follow-ups a kill cut short
    gets its event from a sweep 10 s after the end (Settlement.follow_up_missed)."""
    deadline = time.monotonic() + 30
    while True:
        events = _read_event_log(cluster, traffic, job, client)
        if any(name in TERMINAL_EVENTS for _, name in events) or time.monotonic() > deadline:
            return events
        time.sleep(1.0)


def _read_event_log(
    cluster: Cluster, traffic: Traffic, job: JobRecord, client: httpx.Client
) -> list[tuple[int, str]]:
    record = SseRecord(job.id)
    for _ in range(3):
        replica = pick(cluster, random.Random())
        if replica is None:
            break
        record.events.clear()
        try:
            read_events(client, f"{replica.url}/jobs/{job.id}/events",
                        bearer(traffic.keys[job.customer]), record, 5)  # fmt: skip
            return record.events
        except (httpx.TransportError, httpx.StreamError):
            continue
    return record.events


@dataclass
class ChaosReport:
    seconds: float
    events: list[Event]
    checks: dict[str, list[str]]  # check → its failures (empty: it holds)
    numbers: dict[str, Any]
    resumed_streams: int = 0  # SSE streams that resumed on another replica
    small_spent: float = 0.0  # GPU-s billed to the small budget (ClickHouse)
    small_limit: float = 0.0

    def summary(self) -> str:
        lines = [f"chaos: {self.seconds:.0f} s of traffic"]
        lines += [f"  {k}: {v}" for k, v in self.numbers.items()]
        first = self.events[0].at if self.events else 0.0
        lines.append(
            "  faults: "
            + ", ".join(f"+{e.at - first:.0f}s {e.what}" for e in self.events if "kill" in e.what)
        )
        for name, failures in self.checks.items():
            verdict = "ok" if not failures else f"FAILED ({len(failures)})"
            lines.append(f"  [{verdict}] {name}")
            lines += [f"      {f}" for f in failures[:10]]
        return "\n".join(lines)


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def run_chaos(
    root: Path, model_dir: Path, seconds: float, every: float = 6.0, seed: int = 12,
    budget: float = 0.3, say: Callable[[str], None] = lambda _m: None,
) -> ChaosReport:  # fmt: skip
    cluster = Cluster(root, model_dir, budget)
    try:
        return _run(cluster, seconds, every, seed, say)
    finally:
        cluster.stop_all()


def _run(
    cluster: Cluster, seconds: float, every: float, seed: int, say: Callable[[str], None]
) -> ChaosReport:
    say("starting redis, 2 workers, 3 replicas")
    cluster.start()
    gateway = cluster.any_gateway()
    traffic = Traffic({c: gateway.new_key(c) for c in CUSTOMERS})
    stop_traffic, stop_polls = threading.Event(), threading.Event()
    started_at = now()
    threads = [
        threading.Thread(target=submitter, args=(cluster, traffic, c, stop_traffic, seed + i))
        for i, c in enumerate(CUSTOMERS)
    ]
    threads += [
        threading.Thread(target=sync_client, args=(cluster, traffic, c, stop_traffic, seed + i))
        for i, c in enumerate(("alice", SMALL), start=10)
    ]
    threads += [
        threading.Thread(target=sse_client, args=(cluster, traffic, n, stop_traffic, seed + n))
        for n in range(20, 22)
    ]
    polling = threading.Thread(target=poller, args=(cluster, traffic, stop_polls, seed + 30))
    chaos = threading.Thread(
        target=controller, args=(cluster, traffic, stop_traffic, seconds, seed + 40, every)
    )
    for thread in [*threads, polling, chaos]:
        thread.daemon = True
        thread.start()
    cluster.note("traffic starts")
    say(f"traffic and faults for {seconds:.0f} s")
    chaos.join(seconds + 300)
    stop_traffic.set()
    say("traffic stopped; waiting for every job to end")
    for thread in threads:
        thread.join(150)
    # Everything up again (a fault's restart may have failed): the queue must drain.
    for replica in cluster.replicas:
        if replica.gateway is None:
            cluster.start_replica(replica)
    for worker in cluster.workers:
        if worker.process is None or worker.process.poll() is not None:
            worker.start()
    drained = wait_for(lambda: not traffic.open_jobs(), 150)
    stop_polls.set()
    polling.join(30)
    checks: dict[str, list[str]] = {}
    jobs = list(traffic.jobs.values())

    # 1. exactly one terminal state, one terminal event
    terminal_failures = [] if drained else [f"{len(traffic.open_jobs())} jobs never ended"]
    with httpx.Client() as client:
        for job in jobs:
            if job.final is None:
                terminal_failures.append(f"{job.id} ({job.customer}) never ended")
                continue
            if len(job.terminal_polls) != 1:
                terminal_failures.append(f"{job.id} polled terminal as {job.terminal_polls}")
            log = full_event_log(cluster, traffic, job, client)
            ids = [i for i, _ in log]
            ends = [name for _, name in log if name in TERMINAL_EVENTS]
            if len(ends) != 1 or len(set(ids)) != len(ids):
                terminal_failures.append(f"{job.id}: event log {log}")
    checks["every 202'd job reached exactly one terminal state and one terminal event"] = (
        terminal_failures
    )

    # Wait until the singletons consumed everything: metering pending 0, every record attested.
    def settled() -> bool:
        try:
            answer = httpx.get(
                cluster.any_gateway().url + "/usage", headers=bearer(cluster.admin_key), timeout=10
            )
        except (httpx.TransportError, RuntimeError):
            return False
        return answer.status_code == 200 and answer.json().get("pending_records") == 0

    usage_settled = wait_for(settled, 90, 1.0)
    time.sleep(3)  # the audit batcher seals every batch_seconds (1 s)
    say("stopping the replicas")
    cluster.stop_replicas()

    # 2. no request on two workers at once (the workers' own logs)
    runs = worker_runs(cluster)
    checks["no request ran on two workers at once (workers' logs)"] = overlapping_runs(runs)

    # 4. audit verify, reconcile (the CLI, same config, after the replicas stopped)
    verify = cluster.cli("audit", "verify")
    checks["render-gateway audit verify passes"] = (
        [] if verify.returncode == 0 else [(verify.stdout + verify.stderr)[-1500:]]
    )
    start_iso = dt.datetime.fromtimestamp(started_at - 120, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    end_iso = dt.datetime.fromtimestamp(now() + 120, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    reconcile = cluster.cli("reconcile", "--from", start_iso, "--to", end_iso)
    checks["render-gateway reconcile says reconciled"] = (
        []
        if reconcile.returncode == 0 and reconcile.stdout.startswith("reconciled")
        else [(reconcile.stdout + reconcile.stderr)[-1500:]]
    )

    # 3. one usage row, one attestation per finished request
    stores = read_stores(cluster)
    hot_by_job: dict[str, int] = defaultdict(int)
    hot_by_request: dict[str, int] = defaultdict(int)
    for job_id, request_id, *_ in stores["hot"]:
        if job_id:
            hot_by_job[job_id] += 1
        hot_by_request[request_id] += 1
    cold_by_job: dict[str, int] = defaultdict(int)
    cold_by_request: dict[str, int] = defaultdict(int)
    for row in stores["cold"]:
        if row["job_id"]:
            cold_by_job[row["job_id"]] += 1
        cold_by_request[row["request_id"]] += 1
    usage_failures = [] if usage_settled else ["usage never settled (pending_records > 0)"]
    ran = 0
    for job in jobs:
        if job.final is None:
            continue
        expected = 1 if job.final.get("usage") else 0
        ran += expected
        got = (hot_by_job.get(job.id, 0), cold_by_job.get(job.id, 0))
        if got != (expected, expected):
            usage_failures.append(
                f"job {job.id} ({job.final['status']}, usage {bool(expected)}): "
                f"{got[0]} rows in ClickHouse, {got[1]} attestations"
            )
    answered = [rid for rid, code in traffic.sync_answers.items() if code == 200]
    for request_id in answered:
        got = (hot_by_request.get(request_id, 0), cold_by_request.get(request_id, 0))
        if got != (1, 1):
            usage_failures.append(
                f"sync {request_id}: {got[0]} rows in ClickHouse, {got[1]} attestations"
            )
    for request_id in traffic.sync_answers:
        if hot_by_request.get(request_id, 0) > 1 or cold_by_request.get(request_id, 0) > 1:
            usage_failures.append(f"sync {request_id}: more than one record")
    checks["every finished request: one usage row in ClickHouse, one attestation"] = usage_failures

    # 5. the small budget's overshoot
    small_rows = [r for r in stores["hot"] if r[2] == SMALL and r[5] in ("success", "cancelled")]
    spent = sum(float(r[3]) for r in small_rows)
    per_step = max((float(r[3]) / int(r[4]) for r in small_rows if int(r[4])), default=0.0)
    overshoot = spent - cluster.budget
    bound = SLOTS * per_step
    checks[f"the small budget's overshoot is within {SLOTS} steps (one per slot)"] = (
        [] if overshoot <= bound else [f"spent {spent:.6f} of {cluster.budget}: {overshoot:+.6f}"
                                       f" > {bound:.6f}"]
    )  # fmt: skip

    # 6. positions agreed across replicas and never rose (beyond runs requeued ahead)
    position_failures = []
    reads = replicas_read = 0
    rises = 0
    for job in jobs:
        reads += len(job.positions)
        replicas_read += len({r for _, r, _ in job.positions}) > 1
        requeued_ahead = sum(
            int(other.final.get("retries") or 0) for other in jobs
            if other.final is not None and other.submitted_at < job.submitted_at
        )  # fmt: skip
        risen = sum(
            max(0, b[2] - a[2]) for a, b in zip(job.positions, job.positions[1:], strict=False)
        )
        rises += risen > 0
        if risen > requeued_ahead:
            trail = [(r, p) for _, r, p in job.positions]
            position_failures.append(
                f"{job.id}: rose by {risen} with {requeued_ahead} runs requeued ahead: {trail}"
            )
    checks["positions read on any replica never rose (beyond runs requeued ahead)"] = (
        position_failures
    )

    # 7. SSE resumed with Last-Event-ID saw every event once, in order
    sse_failures = []
    resumed = [s for s in traffic.sse if s.reconnects > 0]
    for record in resumed:
        ids = [i for i, _ in record.events]
        if ids != sorted(set(ids)):
            sse_failures.append(f"{record.job_id} via replicas {record.replicas}: ids {ids}")
        if not record.finished:
            sse_failures.append(f"{record.job_id}: never saw its terminal event")
    checks["every SSE client that reconnected saw each event once, in order"] = sse_failures

    statuses: dict[str, int] = defaultdict(int)
    for job in jobs:
        final = job.final or {"status": "open"}
        code = (final.get("error") or {}).get("code")
        statuses[final["status"] + (f" ({code})" if code else "")] += 1
    numbers = {
        "jobs 202'd": len(jobs),
        "job statuses": dict(statuses),
        "jobs that ran (usage recorded)": ran,
        "submissions retried (503 / connection)": traffic.submit_retries,
        "refusals": dict(traffic.refusals),
        "sync answers": dict(sorted(traffic.sync_codes.items())),
        "sync cut by a kill": traffic.sync_lost,
        "usage rows / attestations": f"{len(stores['hot'])} / {len(stores['cold'])}",
        "worker runs logged": sum(len(v) for v in runs.values()),
        "requests run more than once (in turn)": sum(1 for v in runs.values() if len(v) > 1),
        "position reads": f"{reads} ({replicas_read} jobs read on 2+ replicas, {rises} rose)",
        "SSE streams / resumed on another replica": f"{len(traffic.sse)} / {len(resumed)}",
        "small budget": f"limit {cluster.budget} spent {spent:.4f} overshoot {overshoot:+.4f} "
        f"(bound {bound:.4f} = {SLOTS} x {per_step:.4f} per step)",
        "replica starts": [r.starts for r in cluster.replicas],
    }
    return ChaosReport(
        seconds, cluster.events, checks, numbers, len(resumed), spent, cluster.budget
    )

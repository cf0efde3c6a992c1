"""``make cluster``: Render as N gateway replicas on one Redis, all on 127.0.0.1.

Starts, under one data directory (default ``.render/cluster``; running it again reuses it):

* one ``redis-server`` (Debian's package) with ``appendonly yes`` and ``appendfsync always``,
  its files in ``<data>/redis``, a password from ``<data>/shared/redis_password``;
* ``--workers`` reference workers (``render-gateway worker``) on the demo model;
* ``--replicas`` gateways (``render-gateway serve``), each with its own data dir
  ``<data>/replica-N`` and one shared config file ``<data>/gateway.toml`` naming the shared
  Redis, the chDB usage store, the ``file://`` CAS and assets dir and the secret files in
  ``<data>/shared`` (made once, mode 0600), and every worker as a backend.

It prints the replica URLs, the admin API key, a curl to try and which replica holds each
singleton lease, then waits. SIGINT (Ctrl-C) or SIGTERM stops the replicas, then the workers,
then Redis. The children run in their own process group (a Ctrl-C reaches this script alone,
which stops them in that order) and die with it if it is killed outright (PR_SET_PDEATHSIG).

Run with the venv's python: ``.venv/bin/python scripts/cluster.py [--replicas 3] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.application.webhooks import WebhookSecret
from render_gateway.parent_death import die_with_parent
from render_gateway.signing_keys import write_private_key

CLI = [sys.executable, "-m", "render_gateway"]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
# The reconciler runs under the metering lease: with the embedded usage store only the metering
# holder can open it (application/services.py _start_roles).
SINGLETONS = ("metering", "audit")
LEASE_KEY = "render:lease:{}"  # stores/redis_leases.py: a hash {holder, expires_at, token}
REDIS_DEFAULT_PORT = 6379  # the machine's own Redis, never ours
STOP_GRACE_SECONDS = 30.0

GATEWAY_CONFIG = """\
# Written by scripts/cluster.py; every replica reads this one file.
[gateway]
local_demo_worker = false
drain_seconds = 2
asset_url_secret_file = "{shared}/asset_url_secret"
{backends}
[[gateway.models]]
modality = "image"
family = "sd"
model = "tiny"
tasks = ["t2i", "i2i", "edit"]
aliases = ["render/tiny-sd-demo"]

[gateway.shared]
url = "redis://127.0.0.1:{redis_port}/0"
password_file = "{shared}/redis_password"

[gateway.metering]
url = "chdb://{shared}/usage.chdb"

[gateway.audit]
cas_url = "file://{shared}/cas"
key_file = "{shared}/log.key"

[gateway.webhooks]
secret_file = "{shared}/webhook_secret"

[gateway.stores]
assets = "file://{shared}/assets"
"""

BACKEND = """
[[gateway.backends]]
id = "w{number}"
endpoint = "{url}"
family = "sd"
models = {{ tiny = "demo" }}
capacity = 1
"""


class ClusterError(RuntimeError):
    """A child that would not start; the message says which, and ends with its log."""


@dataclass
class Child:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Cluster:
    redis: Child | None = None
    workers: list[Child] = field(default_factory=list)
    replicas: list[Child] = field(default_factory=list)

    def stop(self) -> None:
        """Replicas first (they drain, release their leases, still reaching Redis and the
        workers), then the workers, then Redis (which writes its AOF on a clean shutdown)."""
        stop_all(self.replicas)
        stop_all(self.workers)
        stop_all([self.redis] if self.redis else [])


def stop_all(children: list[Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{child.name} did not stop in {STOP_GRACE_SECONDS:.0f}s: killing it")
            child.process.kill()
            child.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_or_free(port: int) -> int:
    return port if port else free_port()


def private_file(path: Path, text: str) -> None:
    """Write ``text`` to a new file only its owner can read (made once, kept across runs)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def make_shared_files(shared: Path) -> None:
    """The secrets every replica shares, in the formats of a data dir's own files; each made
    only when missing, so a second run keeps the log key and the Redis password."""
    shared.mkdir(parents=True, exist_ok=True)
    if not (shared / "log.key").exists():
        write_private_key(shared / "log.key", Ed25519PrivateKey.generate())
    if not (shared / "webhook_secret").exists():
        private_file(shared / "webhook_secret", WebhookSecret.generate().text + "\n")
    if not (shared / "asset_url_secret").exists():
        secret = base64.b64encode(secrets.token_bytes(32)).decode()
        private_file(shared / "asset_url_secret", secret + "\n")
    if not (shared / "redis_password").exists():
        private_file(shared / "redis_password", secrets.token_urlsafe(24) + "\n")


def popen(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A child in its own process group (a terminal's Ctrl-C reaches only this script, which
    stops the children in order) that the kernel kills if this script dies without doing so."""
    with log_path.open("ab") as log_file:
        return subprocess.Popen(  # noqa: S603 (our own fixed commands, no shell)
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **OFFLINE_ENV},
            process_group=0,
            preexec_fn=die_with_parent,  # safe here: this script starts no threads
        )


def tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def wait_http_ready(child: Child, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise ClusterError(
                f"{child.name} exited with {child.process.returncode}; the end of "
                f"{child.log_path}:\n{tail(child.log_path)}"
            )
        try:
            if httpx.get(child.url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise ClusterError(
        f"{child.name} not ready within {timeout:.0f}s; the end of {child.log_path}:\n"
        f"{tail(child.log_path)}"
    )


def redis_client(port: int, password: str) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2)


def start_redis(data: Path, port: int, password: str, timeout: float) -> Child:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(server).exists():
        raise ClusterError("redis-server is not installed (make system-deps installs it)")
    directory = data / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    # The password in a 0600 config file rather than on the command line (ps shows that).
    conf = directory / "redis.conf"
    conf.unlink(missing_ok=True)
    private_file(conf, f"requirepass {password}\n")
    log_path = directory / "redis.log"
    process = popen(
        [server, str(conf), "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(directory), "--appendonly", "yes", "--appendfsync", "always",
         "--save", "", "--protected-mode", "yes", "--daemonize", "no",
         "--logfile", str(log_path)],
        directory / "redis-server.out",
    )  # fmt: skip
    child = Child("redis", f"redis://127.0.0.1:{port}/0", process, log_path)
    client = redis_client(port, password)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise ClusterError(f"redis-server exited:\n{tail(log_path)}")
            try:
                if client.ping():
                    return child
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise ClusterError(f"redis-server not up in {timeout:.0f}s") from None
                time.sleep(0.1)
    finally:
        client.close()


def start_worker(data: Path, number: int, port: int, model: Path) -> Child:
    directory = data / f"worker-{number}"
    directory.mkdir(parents=True, exist_ok=True)
    process = popen(
        [*CLI, "worker", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(directory), "--model", f"demo={model}",
         "--parent-pid", str(os.getpid()), "--log-level", "warning"],
        directory / "worker.log",
    )  # fmt: skip
    return Child(f"worker {number}", f"http://127.0.0.1:{port}", process, directory / "worker.log")


def start_replica(data: Path, config: Path, number: int, port: int) -> Child:
    directory = data / f"replica-{number}"
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "gateway.log"
    log_path.write_bytes(b"")  # this run's log only: the admin key is read from it
    process = popen(
        [*CLI, "serve", "--config", str(config), "--data-dir", str(directory),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        log_path,
    )  # fmt: skip
    return Child(f"replica {number}", f"http://127.0.0.1:{port}", process, log_path)


def admin_key(data: Path, first: Child) -> str | None:
    """The key the first replica printed on the cluster's first start (kept in
    ``<data>/admin_key``, mode 0600, for later runs: the gateway prints it only once)."""
    kept = data / "admin_key"
    printed = next(
        (line for line in first.log_path.read_text().splitlines() if line.startswith("rk_")),
        None,
    )
    if printed:
        kept.unlink(missing_ok=True)
        private_file(kept, printed + "\n")
        return printed
    return kept.read_text().strip() if kept.exists() else None


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else "" if value is None else str(value)


def lease_holders(
    port: int, password: str, replicas: list[Child], timeout: float
) -> dict[str, str]:
    """Which replica holds each singleton lease, read from the leases' hashes in Redis; a
    holder id is ``host:pid:random@advertise_url`` (application/singleton.py)."""
    by_pid = {str(replica.process.pid): replica for replica in replicas}
    client = redis_client(port, password)
    held: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    try:
        while True:
            for name in SINGLETONS:
                fields = client.hmget(LEASE_KEY.format(name), "holder", "expires_at")
                holder, expires_at = (text(value) for value in fields)
                if not holder or not expires_at or float(expires_at) < time.time():
                    continue  # never taken, or released (expires_at goes) or lapsed
                parts = holder.split(":")
                replica = by_pid.get(parts[1]) if len(parts) >= 3 else None
                held[name] = f"{replica.name} ({replica.url})" if replica else holder
            if len(held) == len(SINGLETONS) or time.monotonic() > deadline:
                return held
            time.sleep(0.5)
    finally:
        client.close()


def ensure_demo_model(model: Path) -> None:
    if (model / "model_index.json").exists():
        return
    print(f"writing the demo model to {model}")
    subprocess.run(  # noqa: S603 (our own fixed command, no shell)
        [*CLI, "models", "make-demo", str(model)],
        check=True, env={**os.environ, **OFFLINE_ENV}, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".render/cluster"))
    parser.add_argument(
        "--model",
        type=Path,
        default=Path(".render/models/demo"),
        help="the demo pipeline (made when missing)",
    )
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--port",
        type=int,
        default=8081,
        help="the first replica's port, the next ones follow (0: free ports)",
    )
    parser.add_argument(
        "--worker-port",
        type=int,
        default=8091,
        help="the first worker's port, the next ones follow (0: free ports)",
    )
    parser.add_argument(
        "--redis-port",
        type=int,
        default=0,
        help="redis-server's port (default: a free one; never 6379)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds each process may take to become ready"
    )
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.workers < 1:
        parser.error("--replicas and --workers must be at least 1")
    if args.redis_port == REDIS_DEFAULT_PORT:
        parser.error("--redis-port 6379 is the machine's own Redis; pick another")
    return args


def ports(first: int, count: int) -> list[int]:
    return [first + n if first else free_port() for n in range(count)]


def run(args: argparse.Namespace, cluster: Cluster) -> None:
    data = args.data_dir.resolve()
    shared = data / "shared"
    make_shared_files(shared)
    password = (shared / "redis_password").read_text().strip()
    model = args.model.resolve()
    ensure_demo_model(model)

    redis_port = port_or_free(args.redis_port)
    cluster.redis = start_redis(data, redis_port, password, args.timeout)
    print(f"redis    {cluster.redis.url} (AOF, appendfsync always, in {data / 'redis'})")

    for number, port in enumerate(ports(args.worker_port, args.workers), start=1):
        cluster.workers.append(start_worker(data, number, port, model))
    for worker in cluster.workers:
        wait_http_ready(worker, "/v2/health/ready", args.timeout)
        print(f"{worker.name} {worker.url}")

    backends = "".join(
        BACKEND.format(number=n, url=w.url) for n, w in enumerate(cluster.workers, start=1)
    )
    config = data / "gateway.toml"
    config.write_text(
        GATEWAY_CONFIG.format(shared=shared, redis_port=redis_port, backends=backends)
    )

    replica_ports = ports(args.port, args.replicas)
    # The first replica alone: it makes the admin key and the start-up agreement record.
    first = start_replica(data, config, 1, replica_ports[0])
    cluster.replicas.append(first)
    wait_http_ready(first, "/ready", args.timeout)
    for number, port in enumerate(replica_ports[1:], start=2):
        cluster.replicas.append(start_replica(data, config, number, port))
    for replica in cluster.replicas[1:]:
        wait_http_ready(replica, "/ready", args.timeout)

    print()
    for replica in cluster.replicas:
        print(f"{replica.name} {replica.url} (pid {replica.process.pid}, log {replica.log_path})")
    key = admin_key(data, first)
    if key:
        print(f"admin API key {key}")
    else:
        print(
            f"admin API key: not printed (the keys in Redis predate {data / 'admin_key'}); "
            f"make one: {' '.join(CLI)} keys create --customer admin --plan admin "
            f"--config {config} --data-dir {first.log_path.parent}"
        )
    print("try:")
    print(
        f"  curl -s {cluster.replicas[-1].url}/image/sd/tiny/t2i "
        f"-H 'Authorization: Bearer {key or 'rk_…'}' -H 'Content-Type: application/json' "
        """-d '{"prompt": "a fox", "steps": 2, "width": 64, "height": 64}' -o fox.png"""
    )
    for name, holder in lease_holders(redis_port, password, cluster.replicas, 10.0).items():
        roles = "metering and reconciler" if name == "metering" else name
        print(f"lease {name} held by {holder} ({roles})")
    print(f"shared config {config}; Ctrl-C stops everything")
    print("cluster ready", flush=True)

    while True:  # until a signal; a child that dies stops the cluster, saying which
        for child in [cluster.redis, *cluster.workers, *cluster.replicas]:
            if child.process.poll() is not None:
                raise ClusterError(
                    f"{child.name} exited with {child.process.returncode}; the end of "
                    f"{child.log_path}:\n{tail(child.log_path)}"
                )
        time.sleep(1.0)


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cluster = Cluster()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        run(args, cluster)
    except Stop as stop:
        print(f"\n{stop}: stopping the replicas, then the workers, then redis", flush=True)
    except (ClusterError, subprocess.CalledProcessError) as error:
        print(f"cluster: {error}", file=sys.stderr, flush=True)
        code = 1
    finally:
        # A second signal while stopping must not cut the stop short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop()
    print("stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

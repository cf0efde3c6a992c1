"""A real ``redis-server`` process (Debian's package) on a free port of 127.0.0.1, with AOF in a
temporary directory — never the machine's own 6379. Module-scoped: each test module that
needs Redis gets a fresh server, and tests keep apart by key prefix (fresh ids per test)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from support.processes import STARTED, free_port, stop_process

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    url: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]


def start_redis(
    directory: Path,
    port: int | None = None,
    password: str | None = None,
    replica_of: int | None = None,
) -> RedisServer:
    """Start ``redis-server`` with ``appendonly yes`` (``appendfsync always``: an acknowledged
    write survives a kill -9) and wait until it answers PING. With ``password``, it requires
    AUTH (``--requirepass``); ``url`` carries no password. With ``replica_of`` (a port on
    127.0.0.1), it is a replica of that server."""
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "redis.log"
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--appendonly", "yes", "--appendfsync", "always", "--save", "",
         "--logfile", str(log), "--daemonize", "no", "--protected-mode", "yes",
         *(["--requirepass", password] if password else []),
         *(["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    STARTED.append(process)
    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited: {log.read_text(errors='replace')}")
        try:
            if client.ping():
                break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    return RedisServer(f"redis://127.0.0.1:{port}/0", port, directory, process)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not Path(REDIS_SERVER).exists():
        pytest.fail("redis-server is not installed (.ci/run installs Debian's redis-server)")
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    stop_process(server.process)

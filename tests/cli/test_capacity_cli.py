"""``render-gateway capacity`` reading a usage store itself (no gateway running): the figures
for the records in it and the servers the config gives each model; bad options refused."""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from render_gateway.core.usage_records import build_record
from render_gateway.metering.columns import records_to_table
from render_gateway.metering.store import default_usage_url, open_usage_store

from support.processes import CLI, OFFLINE_ENV

CONFIG = """
[gateway]
local_demo_worker = false

[[gateway.backends]]
id = "a"
endpoint = "http://127.0.0.1:9"
family = "sd"
models = { tiny = "demo" }
capacity = 2

[[gateway.backends]]
id = "b"
endpoint = "http://127.0.0.1:9"
family = "sd"
models = { tiny = "demo", big = "big" }
capacity = 1
"""
REQUESTS = 120  # one every 5 s over the last 10 minutes


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("capacity-cli")
    (directory / "gateway.toml").write_text(CONFIG)
    rng = random.Random(1)
    now = time.time()
    records = []
    for i in range(REQUESTS):
        created = now - 600 + 5 * i
        service = rng.expovariate(1 / 2.0)
        records.append(
            build_record(
                request_id=f"r{i}", customer_id="acme", plan="free", tier="async",
                modality="image", family="sd", model="tiny", created_at=created,
                started_at=created, ended_at=created + service, outcome="success",
                parameters={"gpu_seconds": service}, unit_price=0.001, currency="USD",
            ).to_dict()
        )  # fmt: skip
    store = open_usage_store(default_usage_url(directory))
    store.insert(records_to_table(records))
    store.close()
    return directory


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLI, "capacity", "--config", str(data_dir / "gateway.toml"), "--data-dir",
         str(data_dir), *args],
        capture_output=True, timeout=120, env={**os.environ, **OFFLINE_ENV},
    )  # fmt: skip


def test_the_cli_plans_from_the_store_with_the_configured_servers(data_dir: Path) -> None:
    result = run(data_dir, "--json", "--window", "900", "--target-wait", "1")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["queue_depth"] is None  # no gateway asked: the queue is not known
    (plan,) = report["models"]  # ended within the window: all but the last few, still running
    assert plan["model"] == "image/sd/tiny" and plan["servers"] == 3
    assert [b["id"] for b in plan["backends"]] == ["a", "b"]
    n = plan["requests"]
    assert REQUESTS - 5 <= n <= REQUESTS
    assert plan["figures"]["arrival_rate"]["value"] == pytest.approx(n / 900)
    assert plan["figures"]["servers_needed"]["value"] >= 1
    human = run(data_dir, "--model", "image/sd/tiny")
    assert human.returncode == 0, human.stderr
    assert b"image/sd/tiny" in human.stdout and b"utilisation" in human.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [(("--window", "5"), b"--window"), (("--target-wait", "-2"), b"--target-wait")],
)
def test_bad_options_exit_2(data_dir: Path, args: tuple[str, ...], needle: bytes) -> None:
    result = run(data_dir, *args)
    assert result.returncode == 2 and needle in result.stderr

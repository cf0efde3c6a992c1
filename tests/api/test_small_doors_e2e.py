"""Issue 10, item 14, through a real gateway process: rate-limit buckets keyed by (plan,
customer), a 503 that costs no token, a bound on unknown fields, and backend errors that reach
the customer as a code and a short message (the detail in the gateway's log).

The gateway fronts the session's reference worker and ``support/failing_backend.py`` (a
separate process answering like a crashing Triton server)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from support.gateway import GatewayProcess, bearer, start_gateway, stop_gateway, wait_status
from support.processes import WorkerProcess, free_port, stop_process, wait_until_ready
from support.worker_api import wait_idle

JWT_SECRET = "s" * 48
RATE_CAPACITY = 3

CONFIG = """
[gateway]
local_demo_worker = false

[gateway.plans.default]
rate_capacity = {capacity}
rate_refill_per_second = 0.0001

[gateway.plans.admin]
rate_capacity = 1000
rate_refill_per_second = 100
allow_high_priority = true
max_queued_jobs = 10000
admin = true

[gateway.jwt]
algorithms = ["HS256"]
hs256_secret_file = "{secret_file}"

[gateway.retry]
max_attempts = 1

[[gateway.backends]]
id = "w1"
endpoint = "{worker}"
family = "sd"
models = {{ tiny = "demo" }}
capacity = 1

[[gateway.backends]]
id = "broken"
endpoint = "{broken}"
family = "broken"
models = {{ triton = "triton", refusal = "triton-refusal" }}
capacity = 4
streaming = false

[[gateway.models]]
modality = "image"
family = "sd"
model = "tiny"
tasks = ["t2i"]

[[gateway.models]]
modality = "image"
family = "broken"
model = "triton"
tasks = ["t2i"]

[[gateway.models]]
modality = "image"
family = "broken"
model = "refusal"
tasks = ["t2i"]
"""


@pytest.fixture(scope="module")
def broken_backend() -> Iterator[str]:
    port = free_port()
    script = Path(__file__).resolve().parents[1] / "support" / "failing_backend.py"
    process = subprocess.Popen([sys.executable, str(script), str(port)])
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(process, url + "/v2/health/ready", None, 30)
    yield url
    stop_process(process)


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, broken_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    data = tmp_path_factory.mktemp("doors")
    secret_file = data / "jwt.secret"
    secret_file.write_text(JWT_SECRET)
    os.chmod(secret_file, 0o600)
    config = CONFIG.format(
        capacity=RATE_CAPACITY, secret_file=secret_file, worker=worker.url, broken=broken_backend
    )
    process = start_gateway(data, config)
    yield process
    stop_gateway(process)


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker)


def sync(
    gateway: GatewayProcess, path: str, headers: dict[str, str], **body: Any
) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/image/{path}/t2i",
        json={"prompt": "a fox", **body},
        headers=headers,
        timeout=60,
    )


def queue(gateway: GatewayProcess, headers: dict[str, str], **body: Any) -> httpx.Response:
    fields = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i"}
    return httpx.post(
        f"{gateway.url}/queue", json={**fields, "prompt": "a fox", **body}, headers=headers,
        timeout=60,
    )  # fmt: skip


# --- rate-limit buckets ----------------------------------------------------------------------


def test_a_jwt_plan_with_a_colon_does_not_get_the_admin_bucket(gateway: GatewayProcess) -> None:
    token = jwt.encode(
        {"sub": "mallory", "plan": "admin:x", "exp": int(time.time()) + 600},
        JWT_SECRET,
        algorithm="HS256",
    )
    # Each request is charged, then fails fast on the broken backend: no GPU time is spent.
    answers = [sync(gateway, "broken/triton", bearer(token)) for _ in range(RATE_CAPACITY + 1)]
    assert [a.status_code for a in answers] == [502] * RATE_CAPACITY + [429]
    assert answers[-1].json()["error"] == "rate_limited"
    assert answers[-1].headers["x-ratelimit-limit"] == str(RATE_CAPACITY)  # the default plan's


def test_no_capacity_costs_no_token(gateway: GatewayProcess) -> None:
    admin = bearer(gateway.admin_key)
    alice = bearer(gateway.new_key("alice"))
    long_job = queue(gateway, admin, steps=500).json()["id"]
    wait_status(gateway, admin, long_job, {"running"})
    turned_away = [sync(gateway, "sd/tiny", alice) for _ in range(RATE_CAPACITY + 2)]
    assert {a.status_code for a in turned_away} == {503}, [a.text for a in turned_away]
    assert {a.json()["error"] for a in turned_away} == {"no_capacity"}
    httpx.delete(f"{gateway.url}/jobs/{long_job}", headers=admin)
    wait_status(gateway, admin, long_job, {"cancelled", "complete", "error"})
    served = sync(gateway, "sd/tiny", alice, steps=1)
    assert served.status_code == 200, served.text
    assert served.headers["x-ratelimit-remaining"] == str(RATE_CAPACITY - 1)


# --- unknown fields --------------------------------------------------------------------------


def test_a_huge_unknown_field_is_refused_and_a_small_one_is_kept(gateway: GatewayProcess) -> None:
    admin = bearer(gateway.admin_key)
    huge = "x" * (9 * 1024 * 1024)
    for answer in (queue(gateway, admin, blob=huge), sync(gateway, "sd/tiny", admin, blob=huge)):
        assert answer.status_code == 400, answer.text[:300]
        body = answer.json()
        assert body["error"] == "invalid_request"
        assert "'blob'" in body["message"] and "16384" in body["message"]
        assert len(answer.content) < 4096  # the value is not echoed back
    kept = queue(gateway, admin, scheduler="euler", steps=1)
    assert kept.status_code == 202, kept.text
    job = wait_status(gateway, admin, kept.json()["id"], {"complete", "error"})
    assert job["request"]["generation"]["scheduler"] == "euler"


# --- backend errors --------------------------------------------------------------------------

LEAKS = ("Traceback", "/srv/", "model.py", "secret-marker", 'File "')


def assert_no_leak(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} reached the customer: {text}"


def test_a_triton_traceback_reaches_the_customer_as_a_code_and_a_short_message(
    gateway: GatewayProcess,
) -> None:
    admin = bearer(gateway.admin_key)
    failed = sync(gateway, "broken/triton", admin)
    assert failed.status_code == 502
    body = failed.json()
    # Triton's wording of a model's own failure: about this request, so not retried
    assert body["error"] == "model_error" and body["details"]["retriable"] is False
    assert body["message"] == "the model failed on this request"
    assert_no_leak(failed.text)

    fields = {"family": "broken", "model": "triton"}
    job_id = queue(gateway, admin, **fields).json()["id"]
    job = wait_status(gateway, admin, job_id, {"error"})
    assert job["error"]["code"] == "model_error" and job["retries"] == 0
    assert_no_leak(str(job["error"]))
    with httpx.stream(
        "GET", f"{gateway.url}/jobs/{job_id}/events", headers=admin, timeout=30
    ) as events:
        assert_no_leak("".join(events.iter_text()))

    # The operator still has the whole story.
    deadline = time.monotonic() + 10
    while "secret-marker-7f3a" not in gateway.log():
        assert time.monotonic() < deadline, "the backend's detail is not in the gateway log"
        time.sleep(0.1)


def test_a_triton_refusal_is_a_400_without_server_paths(gateway: GatewayProcess) -> None:
    refused = sync(gateway, "broken/refusal", bearer(gateway.admin_key))
    assert refused.status_code == 400
    assert refused.json()["error"] == "backend_error"
    assert refused.json()["message"] == "the backend refused the request (backend_error)"
    assert_no_leak(refused.text)

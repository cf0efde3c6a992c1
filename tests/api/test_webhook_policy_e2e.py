"""Issue 10, item 1, through a real gateway process with the default webhook policy (https
only, public addresses only): webhooks to loopback, private, link-local and metadata addresses
are refused at submit with a 400 naming the field, and an alert webhook the policy forbids
stops the start. Nothing here connects anywhere: IP literals are refused from the URL, and the
only name resolved is ``localhost`` (from /etc/hosts). Delivery-time refusals (a name that
rebinds after the check, redirects) are tested against the sender in test_webhooks.py; the
opted-in delivery path in test_gateway_e2e.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.gateway import ONE_WORKER_CONFIG, GatewayProcess, start_gateway, stop_gateway
from support.processes import CLI, OFFLINE_ENV, WorkerProcess, free_port


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    data = tmp_path_factory.mktemp("webhook-policy")
    process = start_gateway(data, ONE_WORKER_CONFIG.format(worker=worker.url))
    yield process
    stop_gateway(process)


def submit(gateway: GatewayProcess, webhook: str) -> httpx.Response:
    body = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
            "prompt": "a fox", "steps": 1, "webhook": webhook}  # fmt: skip
    headers = {"Authorization": f"Bearer {gateway.admin_key}"}
    return httpx.post(gateway.url + "/queue", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://localhost:8443/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://0.0.0.0/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.7/hook",
        "https://[::1]:8443/hook",
        "https://2130706433/hook",
        "http://hooks.example.com/hook",  # http: refused by its scheme, before any lookup
    ],
)
def test_a_webhook_the_policy_forbids_is_a_400_naming_the_field(
    gateway: GatewayProcess, url: str
) -> None:
    answer = submit(gateway, url)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error"] == "invalid_request"
    assert body["message"].startswith("webhook: ")
    assert body["details"] == {"field": "webhook"}
    assert body["request_id"] == answer.headers["x-request-id"]
    reason = "https" if url.startswith("http:") else "non-public address"
    assert reason in body["message"]


@pytest.mark.parametrize(
    ("alert", "reason"),
    [
        ("https://169.254.169.254/alerts", "non-public address"),
        ("http://alerts.example.com/hook", "https"),
    ],
)
def test_serve_refuses_an_alert_webhook_the_policy_forbids(
    tmp_path: Path, alert: str, reason: str
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway.reconcile]\nalert_webhook = "{alert}"\n')
    result = subprocess.run(
        [*CLI, "serve", "--config", str(config), "--data-dir", str(tmp_path / "data"),
         "--port", str(free_port())],
        capture_output=True, timeout=60, env={**os.environ, **OFFLINE_ENV},
    )  # fmt: skip
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0
    assert "gateway.reconcile.alert_webhook" in output and reason in output
    assert "Traceback" not in output

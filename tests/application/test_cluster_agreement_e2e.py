"""Two gateway processes with their own data dirs on one real redis-server that requires a
password: with the shared secret files, metering URL, CAS and assets dir they start and sign
alike (an asset URL minted by one is read through the other, the log key is the same); one
whose CAS differs, or one without the Redis password, is refused at start, saying why."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.application.webhooks import WebhookSecret
from render_gateway.signing_keys import write_private_key

from support.gateway import ONE_WORKER_CONFIG, bearer, start_gateway, stop_gateway
from support.processes import WorkerProcess, stop_process
from support.redis_server import RedisServer, start_redis

PASSWORD = "pw-" + secrets.token_hex(8)
SHARED = """
drain_seconds = 1
asset_url_secret_file = "{shared}/asset_url_secret"

[gateway.shared]
url = "{redis}"
{password_line}

[gateway.metering]
url = "chdb://{shared}/usage.chdb"

[gateway.audit]
cas_url = "file://{cas}"
key_file = "{shared}/log.key"

[gateway.webhooks]
secret_file = "{shared}/webhook_secret"

[gateway.stores]
assets = "file://{shared}/assets"
"""


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD)
    try:
        yield server
    finally:
        stop_process(server.process)


def private(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o600)


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """The files every replica shares, made as an operator would (see OPERATIONS.md)."""
    directory = tmp_path / "shared"
    directory.mkdir()
    write_private_key(directory / "log.key", Ed25519PrivateKey.generate())
    private(directory / "webhook_secret", WebhookSecret.generate().text + "\n")
    private(directory / "asset_url_secret", base64.b64encode(secrets.token_bytes(32)).decode())
    private(directory / "redis_password", PASSWORD + "\n")
    return directory


def config(
    worker: WorkerProcess, redis: RedisServer, shared: Path, *, cas: str = "cas",
    password: bool = True,
) -> str:  # fmt: skip
    line = f'password_file = "{shared}/redis_password"' if password else ""
    text = SHARED.format(shared=shared, redis=redis.url, password_line=line, cas=shared / cas)
    base = ONE_WORKER_CONFIG.format(worker=worker.url)
    head, rest = base.split("\n[[gateway.backends]]", 1)
    # [gateway] keys first, then the sections: TOML puts a key under the last table opened.
    top, sections = text.split("\n[gateway.shared]", 1)
    return head + top + "\n[[gateway.backends]]" + rest + "\n[gateway.shared]" + sections


def test_replicas_that_share_everything_start_and_sign_alike(
    worker: WorkerProcess, locked_redis: RedisServer, shared: Path, tmp_path: Path
) -> None:
    text = config(worker, locked_redis, shared)
    first = start_gateway(tmp_path / "a", text)
    try:
        second = start_gateway(tmp_path / "b", text)
        try:
            assert first.admin_key.startswith("rk_")  # made in the Redis, through AUTH
            assert first.cli("audit", "pubkey") == second.cli("audit", "pubkey")
            made = httpx.post(
                f"{first.url}/image/sd/tiny/t2i", headers=bearer(first.admin_key), timeout=120,
                json={"prompt": "a fox", "seed": 4, "steps": 2, "width": 64, "height": 64},
            )  # fmt: skip
            assert made.status_code == 200, made.text
            signed = made.headers["content-location"]
            assert "signature=" in signed
            # Minted by the first, read through the second with no credentials at all.
            public = httpx.get(second.url + signed, timeout=30)
            assert public.status_code == 200 and public.content == made.content
            assert not (tmp_path / "a" / "webhook_secret").exists()
            assert not (tmp_path / "b" / "asset_url_secret").exists()

            # A third whose CAS differs would fork the log: refused, naming the setting.
            other = config(worker, locked_redis, shared, cas="other-cas")
            with pytest.raises(RuntimeError) as refused:
                start_gateway(tmp_path / "c", other, timeout=120)
            message = str(refused.value)
            assert (
                f"audit.cas_url is file://{shared}/other-cas here but file://{shared}/cas on "
                "the replicas already running; replicas must share it"
            ) in message
            assert "Traceback" not in message
        finally:
            stop_gateway(second)
    finally:
        stop_gateway(first)


def test_a_replica_without_the_redis_password_is_refused_at_start(
    worker: WorkerProcess, locked_redis: RedisServer, shared: Path, tmp_path: Path
) -> None:
    text = config(worker, locked_redis, shared, password=False)
    with pytest.raises(RuntimeError) as refused:
        start_gateway(tmp_path / "a", text, timeout=120)
    message = str(refused.value)
    assert "the gateway cannot start" in message and "Authentication" in message
    assert "Traceback" not in message

"""The secrets replicas share, read from files; the Redis password; the record of what replicas
must agree on, against a real redis-server (with ``--requirepass``)."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.exceptions
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.application.asset_urls import AssetUrlSigner, UrlCheck
from render_gateway.application.cluster_agreement import (
    ClusterAgreement,
    ClusterDisagrees,
    agreed_settings,
    differences,
    use_shared_password,
    without_password,
)
from render_gateway.application.webhooks import WebhookSecret
from render_gateway.audit.keys import load_signer, public_key_line
from render_gateway.config import GatewayConfig
from render_gateway.signing_keys import KeyFileError, write_private_key
from render_gateway.stores.cluster_record import MemoryClusterRecord, RedisClusterRecord
from render_gateway.stores.redis_client import open_redis, use_password
from render_gateway.stores.redis_usage_log import open_sync_redis

from support.processes import stop_process
from support.redis_server import RedisServer, start_redis

PASSWORD = "s3cret-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD)
    try:
        yield server
    finally:
        stop_process(server.process)


@pytest.fixture(autouse=True)
def no_process_password() -> Iterator[None]:
    yield
    use_password(None)  # the setting is process-wide: leave none behind for other tests


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def shared_secrets(directory: Path) -> tuple[Path, Path, Path]:
    key_file = directory / "log.key"
    write_private_key(key_file, Ed25519PrivateKey.generate())
    webhook = private(directory / "webhook_secret", WebhookSecret.generate().text + "\n")
    asset = private(
        directory / "asset_url_secret", base64.b64encode(secrets.token_bytes(32)).decode() + "\n"
    )
    return key_file, webhook, asset


def test_secret_files_are_read_and_give_the_same_signatures(tmp_path: Path) -> None:
    key_file, webhook, asset = shared_secrets(tmp_path)
    one, two = tmp_path / "a", tmp_path / "b"
    signer_a = load_signer(one, "o", key_file)
    signer_b = load_signer(two, "o", key_file)
    assert public_key_line(signer_a) == public_key_line(signer_b)
    assert not (one / "audit").exists()  # nothing created in the data dir
    url = AssetUrlSigner.load_or_create(one / "asset_url_secret", 3600, asset).sign("asset-1")
    other = AssetUrlSigner.load_or_create(two / "asset_url_secret", 3600, asset)
    query = dict(part.split("=", 1) for part in url.url.split("?", 1)[1].split("&"))
    assert other.check("asset-1", query) is UrlCheck.valid
    secret_a = WebhookSecret.load_or_create(one / "webhook_secret", webhook)
    assert secret_a == WebhookSecret.load_or_create(two / "webhook_secret", webhook)
    assert not (one / "webhook_secret").exists() and not (one / "asset_url_secret").exists()


def test_a_missing_or_readable_secret_file_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(KeyFileError, match=r"gateway.audit.key_file: .*nope does not exist"):
        load_signer(tmp_path, "o", missing)
    with pytest.raises(ValueError, match=r"gateway.webhooks.secret_file: .*nope does not exist"):
        WebhookSecret.load_or_create(tmp_path / "own", missing)
    with pytest.raises(ValueError, match=r"gateway.asset_url_secret_file: .*nope does not exist"):
        AssetUrlSigner.load_or_create(tmp_path / "own", 60, missing)
    key_file, webhook, asset = shared_secrets(tmp_path)
    for path in (key_file, webhook, asset):
        os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_signer(tmp_path, "o", key_file)
    with pytest.raises(ValueError, match="chmod 600"):
        WebhookSecret.load_or_create(tmp_path / "own", webhook)
    with pytest.raises(ValueError, match="chmod 600"):
        AssetUrlSigner.load_or_create(tmp_path / "own", 60, asset)


def test_fingerprints_never_carry_the_secret(tmp_path: Path) -> None:
    key_file, webhook, asset = shared_secrets(tmp_path)
    secret = WebhookSecret.load(webhook)
    signer = AssetUrlSigner.load(asset, 60)
    settings = agreed_settings(
        GatewayConfig(data_dir=tmp_path), tmp_path, load_signer(tmp_path, "o", key_file),
        secret, signer,
    )  # fmt: skip
    text = repr(settings)
    for raw in (secret.key, signer.key):
        assert raw.hex() not in text and base64.b64encode(raw).decode() not in text
    assert settings["webhooks.secret_file"] == WebhookSecret.load(webhook).fingerprint()
    assert settings["webhooks.secret_file"] != WebhookSecret.generate().fingerprint()
    assert settings["audit.cas_url"].startswith("file://")


def test_a_password_in_a_shared_url_is_never_recorded(tmp_path: Path) -> None:
    key_file, webhook, asset = shared_secrets(tmp_path)
    config = GatewayConfig.model_validate({
        "data_dir": tmp_path,
        "metering": {"url": "clickhouse://metering:s3cret-pw@127.0.0.1:8123/render"},
    })  # fmt: skip
    settings = agreed_settings(
        config, tmp_path, load_signer(tmp_path, "o", key_file), WebhookSecret.load(webhook),
        AssetUrlSigner.load(asset, 60),
    )  # fmt: skip
    assert "s3cret-pw" not in repr(settings)
    assert settings["metering.url"] == "clickhouse://metering:***@127.0.0.1:8123/render"
    assert without_password("file:///srv/cas") == "file:///srv/cas"


def test_differences_name_each_setting() -> None:
    here = {"audit.cas_url": "file:///a/cas", "metering.url": "chdb:///m", "audit.key_file": "1",
            "stores.budgets": "memory://", "stores.slots": "memory://"}  # fmt: skip
    running = {"audit.cas_url": "file:///b/cas", "metering.url": "chdb:///m", "audit.key_file": "2",
               "stores.budgets": "redis://127.0.0.1:7000/0"}  # fmt: skip
    found = differences(here, running)
    # stores.slots: not recorded by the (older) replicas running, so not compared.
    assert found == [
        "audit.cas_url is file:///a/cas here but file:///b/cas on the replicas already running; "
        "replicas must share it",
        "the audit log's signing key (gateway.audit.key_file) differs from the one the replicas "
        "already running use; replicas must share it",
        "stores.budgets is memory:// here but redis://127.0.0.1:7000/0 on the replicas already "
        "running; replicas must share it",
    ]


async def test_the_first_holder_wins_and_others_are_refused() -> None:
    record = MemoryClusterRecord()
    first = ClusterAgreement(record, '{"audit.origin":"a"}')
    await first.hold()
    await ClusterAgreement(record, '{"audit.origin":"a"}').hold()  # the same: agreed
    with pytest.raises(ClusterDisagrees, match=r"audit.origin is b here but a on the replicas"):
        await ClusterAgreement(record, '{"audit.origin":"b"}').hold()


async def test_the_redis_record_lapses_when_nobody_renews_it(locked_redis: RedisServer) -> None:
    use_password(PASSWORD)
    name = "agreement-" + secrets.token_hex(4)
    record = RedisClusterRecord(open_redis(locked_redis.url), name)
    other = RedisClusterRecord(open_redis(locked_redis.url), name)
    try:
        assert await record.hold("one", 0.5) is None
        assert await record.hold("one", 0.5) is None  # renewed
        assert await other.hold("two", 0.5) == "one"
        await asyncio.sleep(0.8)
        assert await other.hold("two", 0.5) is None  # the first lapsed: the record is replaced
        assert await record.hold("one", 0.5) == "two"
    finally:
        await record.close()
        await other.close()


async def test_the_password_file_reaches_every_client(
    locked_redis: RedisServer, tmp_path: Path
) -> None:
    bare = open_redis(locked_redis.url)
    # An AuthenticationError (a ConnectionError), maybe wrapped as the stores' "unavailable".
    with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)authenticat"):
        await bare.ping()
    await bare.aclose()
    password_file = private(tmp_path / "redis_password", PASSWORD + "\n")
    config = GatewayConfig.model_validate({"shared": {"password_file": str(password_file)}})
    use_shared_password(config)
    client = open_redis(locked_redis.url)
    assert await client.ping()
    await client.aclose()
    sync_client = open_sync_redis(locked_redis.url)
    assert sync_client.ping()
    sync_client.close()
    use_password(None)
    in_url = locked_redis.url.replace("redis://", f"redis://:{PASSWORD}@")
    client = open_redis(in_url)  # a password in the URL still works
    assert await client.ping()
    await client.aclose()
    os.chmod(password_file, 0o640)
    with pytest.raises(PermissionError, match="chmod 600"):
        use_shared_password(config)
    missing = GatewayConfig.model_validate({"shared": {"password_file": str(tmp_path / "x")}})
    with pytest.raises(FileNotFoundError, match=r"gateway.shared.password_file"):
        use_shared_password(missing)

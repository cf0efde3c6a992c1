"""API keys on a real SQLite file: shown once, stored only as hashes, revocable, private."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import stat
from pathlib import Path

import pytest

from render_gateway.auth.api_keys import ApiKey, SqliteApiKeyStore
from render_gateway.auth.principal import AuthError

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def raw_bytes(db: Path) -> bytes:
    """The database file and its write-ahead log, exactly as they lie on disk."""
    wal = db.with_name(db.name + "-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def expect_auth_error(store: SqliteApiKeyStore, secret: str, code: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        await store.authenticate(secret)
    assert caught.value.code == code
    if secret:  # the empty string is in every message
        assert secret not in str(caught.value)
    return caught.value


async def test_create_then_authenticate(key_store: SqliteApiKeyStore) -> None:
    key, secret = await key_store.create("cust_1", "pro")
    assert re.fullmatch(r"rk_[0-9A-Za-z]{40}", secret)
    assert re.fullmatch(r"key_[0-9A-Za-z]{12}", key.key_id)
    assert (key.customer_id, key.plan, key.revoked_at) == ("cust_1", "pro", None)
    assert await key_store.authenticate(secret) == key


async def test_every_key_gets_its_own_secret_and_id(key_store: SqliteApiKeyStore) -> None:
    created = [await key_store.create("cust_1", "pro") for _ in range(20)]
    assert len({secret for _, secret in created}) == 20
    assert len({key.key_id for key, _ in created}) == 20
    for key, secret in created:
        assert await key_store.authenticate(secret) == key


async def test_database_holds_hashes_never_secrets(tmp_path: Path) -> None:
    db = tmp_path / "private" / "keys.db"
    store = SqliteApiKeyStore(db)
    created = [await store.create(f"cust_{i}", "pro") for i in range(10)]
    await store.authenticate(created[0][1])
    await store.revoke(created[1][0].key_id)
    wal = db.with_name(db.name + "-wal")
    assert wal.exists()  # the connection is open, so recent writes may live only in the log

    on_disk = raw_bytes(db)
    for _, secret in created:
        assert secret.encode() not in on_disk
        assert secret[3:].encode() not in on_disk  # not even without its prefix
        # What is stored is the digest: finding it proves these are the right bytes to search.
        assert hashlib.sha256(secret.encode()).digest() in on_disk

    assert mode(db) == 0o600
    assert mode(wal) == 0o600
    assert mode(db.parent) == 0o700

    await store.close()
    on_disk = raw_bytes(db)
    assert not any(secret.encode() in on_disk for _, secret in created)
    assert mode(db) == 0o600


async def test_unknown_secret_is_refused(key_store: SqliteApiKeyStore) -> None:
    await key_store.create("cust_1", "pro")
    stranger = "rk_" + "".join(BASE62[i % 62] for i in range(7, 47))
    await expect_auth_error(key_store, stranger, "invalid_api_key")


@pytest.mark.parametrize("position", [3, 4, 20, 41, 42])
async def test_one_changed_character_is_refused(
    key_store: SqliteApiKeyStore, position: int
) -> None:
    _, secret = await key_store.create("cust_1", "pro")
    changed = BASE62[(BASE62.index(secret[position]) + 1) % 62]
    tampered = secret[:position] + changed + secret[position + 1 :]
    await expect_auth_error(key_store, tampered, "invalid_api_key")
    await key_store.authenticate(secret)  # the real one still works


async def test_malformed_secrets_are_refused(key_store: SqliteApiKeyStore) -> None:
    _, secret = await key_store.create("cust_1", "pro")
    for malformed in (
        "",
        "rk_",
        secret[:-1],
        secret + "0",
        secret + "\n",
        " " + secret,
        secret.upper(),
        "RK_" + secret[3:],
        secret[:-1] + "é",
        secret[:-1] + "-",
    ):
        await expect_auth_error(key_store, malformed, "invalid_api_key")


async def test_revoked_key_is_refused(key_store: SqliteApiKeyStore) -> None:
    key, secret = await key_store.create("cust_1", "pro")
    other, other_secret = await key_store.create("cust_1", "pro")
    assert await key_store.revoke(key.key_id) is True
    error = await expect_auth_error(key_store, secret, "revoked_api_key")
    assert key.key_id in error.message
    assert await key_store.revoke(key.key_id) is False  # once only
    assert await key_store.revoke("key_doesnotexist") is False
    assert await key_store.authenticate(other_secret) == other


async def test_list_shows_every_key_with_revoked_at(tmp_path: Path) -> None:
    ticks = itertools.count(1000)
    store = SqliteApiKeyStore(tmp_path / "keys.db", clock=lambda: float(next(ticks)))
    first, _ = await store.create("cust_1", "pro")
    second, _ = await store.create("cust_2", "free")
    assert await store.revoke(first.key_id)
    listed = await store.list()
    assert listed == [
        ApiKey(first.key_id, "cust_1", "pro", created_at=1000.0, revoked_at=1002.0),
        ApiKey(second.key_id, "cust_2", "free", created_at=1001.0, revoked_at=None),
    ]
    await store.close()


@pytest.mark.parametrize(
    "bad",
    ["", "a" * 129, "has space", "semi;colon", "quote'", "slash/", "new\nline", "ünïcode", "a|b"],
)
async def test_invalid_customer_ids_and_plans_are_rejected(
    key_store: SqliteApiKeyStore, bad: str
) -> None:
    with pytest.raises(ValueError, match="customer id"):
        await key_store.create(bad, "pro")
    with pytest.raises(ValueError, match="plan"):
        await key_store.create("cust_1", bad)
    assert await key_store.list() == []


async def test_valid_names_at_the_edges_are_accepted(key_store: SqliteApiKeyStore) -> None:
    for name in ("a", "x" * 128, "org:team.user@example.com", "A-Z_0-9"):
        key, secret = await key_store.create(name, name)
        assert await key_store.authenticate(secret) == key


async def test_keys_survive_a_reopen(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    store = SqliteApiKeyStore(db)
    kept, kept_secret = await store.create("cust_1", "pro")
    gone, gone_secret = await store.create("cust_1", "pro")
    await store.revoke(gone.key_id)
    await store.close()

    again = SqliteApiKeyStore(db)
    assert await again.authenticate(kept_secret) == kept
    await expect_auth_error(again, gone_secret, "revoked_api_key")
    await again.close()


async def test_revocation_by_another_store_is_seen_at_once(tmp_path: Path) -> None:
    # The CLI revokes through its own connection while the gateway keeps serving.
    db = tmp_path / "keys.db"
    gateway, cli = SqliteApiKeyStore(db), SqliteApiKeyStore(db)
    key, secret = await gateway.create("cust_1", "pro")
    assert await gateway.authenticate(secret) == key
    assert await cli.revoke(key.key_id)
    await expect_auth_error(gateway, secret, "revoked_api_key")
    await cli.close()
    await gateway.close()


async def test_concurrent_authentications(key_store: SqliteApiKeyStore) -> None:
    created = [await key_store.create(f"cust_{i}", "pro") for i in range(5)]
    results = await asyncio.gather(
        *(key_store.authenticate(secret) for _ in range(10) for _, secret in created)
    )
    assert results == [key for _ in range(10) for key, _ in created]


async def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SqliteApiKeyStore(tmp_path / "keys.db")
    await store.create("cust_1", "pro")
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.list()

"""What only the ``sqlite://`` key store does: a private file that holds hashes, never secrets,
in the schema keys.db files have always had. (The contract is tests/contracts/test_keys.py.)"""

from __future__ import annotations

import hashlib
import sqlite3
import stat
from pathlib import Path

from render_gateway.auth.api_keys import ApiKey
from render_gateway.stores.keys import open_key_store
from render_gateway.stores.sqlite_keys import SqliteApiKeyStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def raw_bytes(db: Path) -> bytes:
    """The database file and its write-ahead log, exactly as they lie on disk."""
    wal = db.with_name(db.name + "-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_a_sqlite_url_opens_a_store_on_that_path(tmp_path: Path) -> None:
    store = open_key_store(f"sqlite://{tmp_path / 'keys.db'}")
    assert isinstance(store, SqliteApiKeyStore)


async def test_database_holds_hashes_never_secrets(tmp_path: Path) -> None:
    db = tmp_path / "private" / "keys.db"
    store = open_key_store(f"sqlite://{db}")
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


async def test_keys_survive_a_reopen(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'keys.db'}"
    store = open_key_store(url)
    kept, kept_secret = await store.create("cust_1", "pro")
    gone, _ = await store.create("cust_1", "pro")
    await store.revoke(gone.key_id)
    await store.close()

    again = open_key_store(url)
    assert await again.authenticate(kept_secret) == kept
    assert [key.revoked_at is not None for key in await again.list()] == [False, True]
    await again.close()


# keys.db as every earlier release wrote it: the schema must stay readable as it is.
EARLIER_SCHEMA = """
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    secret_sha256 BLOB NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    plan TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
PRAGMA user_version = 1;
"""


async def test_an_existing_keys_db_keeps_working(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    secret = "rk_" + "A1b2C3d4E5" * 4
    conn = sqlite3.connect(db)
    with conn:
        conn.executescript(EARLIER_SCHEMA)
        conn.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?)",
            ("key_0123456789ab", hashlib.sha256(secret.encode()).digest(), "c", "pro", 5.0, None),
        )
    conn.close()
    db.chmod(0o600)

    store = open_key_store(f"sqlite://{db}")
    key = ApiKey("key_0123456789ab", "c", "pro", 5.0, None)
    assert await store.authenticate(secret) == key
    new, new_secret = await store.create("d", "free")
    assert await store.list() == [key, new]
    await store.close()

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    found = conn.execute("SELECT customer_id FROM api_keys WHERE secret_sha256 = ?",
                         (hashlib.sha256(new_secret.encode()).digest(),)).fetchone()  # fmt: skip
    conn.close()
    assert found == ("d",)  # written in the same layout, so an earlier release reads it

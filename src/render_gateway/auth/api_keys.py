"""API keys in SQLite: the secret is shown once and only its SHA-256 is ever stored.

A secret is ``rk_`` + 40 base62 characters (40 · log2 62 ≈ 238 random bits). Guessing one is
hopeless, so a fast unsalted hash is enough: it cannot be inverted or brute-forced, and it lets
``authenticate`` find the key with one indexed lookup instead of checking every row with a slow
KDF. Every check reads the table, so a revocation (from the CLI, another process) takes effect on
the next request.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from render_gateway.auth.names import check_name
from render_gateway.auth.principal import AuthError
from render_gateway.auth.private_file import create_private_file
from render_gateway.core.ids import random_base62

T = TypeVar("T")

API_KEY_PREFIX = "rk_"
_SECRET_CHARS = 40
_KEY_ID_CHARS = 12  # a key id is a handle, not a credential: uniqueness is all it needs
_SECRET = re.compile(rf"rk_[0-9A-Za-z]{{{_SECRET_CHARS}}}")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    secret_sha256 BLOB NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    plan TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""
_COLUMNS = "key_id, customer_id, plan, created_at, revoked_at"


@dataclass(frozen=True)
class ApiKey:
    """What is stored about a key. Times are seconds since the epoch (UTC)."""

    key_id: str
    customer_id: str
    plan: str
    created_at: float
    revoked_at: float | None = None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _row_to_key(row: tuple[Any, ...]) -> ApiKey:
    key_id, customer_id, plan, created_at, revoked_at = row
    return ApiKey(key_id, customer_id, plan, created_at, revoked_at)


class SqliteApiKeyStore:
    """API keys in one SQLite file (mode 0600); the blocking work runs in worker threads."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        # One connection, opened on first use, used by one thread at a time.
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def create(self, customer_id: str, plan: str) -> tuple[ApiKey, str]:
        """A new key and its secret. The secret is not kept anywhere: show it once."""
        check_name("customer id", customer_id)
        check_name("plan", plan)
        secret = API_KEY_PREFIX + random_base62(_SECRET_CHARS)
        key = ApiKey("key_" + random_base62(_KEY_ID_CHARS), customer_id, plan, self._clock())

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO api_keys (secret_sha256, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
                (_digest(secret), key.key_id, key.customer_id, key.plan, key.created_at, None),
            )

        await self._call(insert)
        return key, secret

    async def authenticate(self, secret: str) -> ApiKey:
        """The active key whose secret this is; AuthError otherwise."""
        if _SECRET.fullmatch(secret) is None:  # no database work for what cannot be a key
            raise AuthError("invalid_api_key", "the API key is malformed")
        digest = _digest(secret)

        def find(conn: sqlite3.Connection) -> ApiKey | None:
            # The index compares hashes, so its timing reveals nothing usable about the secret.
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE secret_sha256 = ?",  # noqa: S608
                (digest,),
            ).fetchone()
            return _row_to_key(row) if row else None

        key = await self._call(find)
        if key is None:
            raise AuthError("invalid_api_key", "the API key is not known")
        if key.revoked_at is not None:
            raise AuthError("revoked_api_key", f"the API key {key.key_id} has been revoked")
        return key

    async def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones included, oldest first."""

        def select(conn: sqlite3.Connection) -> builtins.list[ApiKey]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY rowid").fetchall()  # noqa: S608
            return [_row_to_key(row) for row in rows]

        return await self._call(select)

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key; False if there is no such key or it was revoked already."""
        now = self._clock()

        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (now, key_id),
            )
            return cursor.rowcount == 1

        return await self._call(update)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    # ------------------------------------------------------------------ connection

    async def _call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._run, operation)

    def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise RuntimeError("the API key store is closed")
            if self._conn is None:
                self._conn = self._open()
            with self._conn:  # one transaction: committed, or rolled back on an exception
                return operation(self._conn)

    def _open(self) -> sqlite3.Connection:
        create_private_file(self._path)  # before SQLite touches it, so it never has a wider mode
        conn = sqlite3.connect(self._path, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")  # the CLI can revoke while the gateway reads
            conn.execute("PRAGMA synchronous = FULL")  # a revocation must survive a crash
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

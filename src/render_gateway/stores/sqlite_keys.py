"""``sqlite:///…`` API keys: one SQLite file (mode 0600); the blocking work runs in threads.

The schema is the one keys.db files have always had, so existing files keep working. The CLI
and the gateway open the same file; WAL lets the CLI revoke while the gateway reads.
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from render_gateway.auth.api_keys import ApiKey, active_key, new_key, secret_digest
from render_gateway.auth.private_file import create_private_file

T = TypeVar("T")

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


def _row_to_key(row: tuple[Any, ...]) -> ApiKey:
    key_id, customer_id, plan, created_at, revoked_at = row
    return ApiKey(key_id, customer_id, plan, created_at, revoked_at)


# Verified keys kept at most (each a few hundred bytes); more distinct keys start the set over.
_VERIFIED_KEPT = 10_000


class SqliteApiKeyStore:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        # One connection, opened on first use, used by one thread at a time.
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # Keys verified since the database last changed. SQLite's data_version moves whenever
        # another connection (a revocation, by the CLI or another replica) commits, and reading
        # it touches only the WAL index in shared memory: cheap enough for the event loop, so a
        # request costs no thread hand-off, and a revocation still takes effect at once.
        self._watch: sqlite3.Connection | None = None  # the event loop's: data_version only
        self._verified: dict[bytes, ApiKey] = {}
        self._verified_at: int | None = None  # the data_version they were read at

    async def create(self, customer_id: str, plan: str) -> tuple[ApiKey, str]:
        key, secret = new_key(customer_id, plan, self._clock())
        digest = secret_digest(secret)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO api_keys (secret_sha256, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
                (digest, key.key_id, key.customer_id, key.plan, key.created_at, None),
            )

        await self._call(insert)
        return key, secret

    async def create_first(self, customer_id: str, plan: str) -> tuple[ApiKey, str] | None:
        key, secret = new_key(customer_id, plan, self._clock())
        digest = secret_digest(secret)

        def insert_into_empty(conn: sqlite3.Connection) -> bool:
            # One statement: SQLite takes the write lock before it reads, so of two processes
            # on one file the second waits (busy_timeout), then sees the first one's key.
            cursor = conn.execute(
                f"INSERT INTO api_keys (secret_sha256, {_COLUMNS}) "  # noqa: S608
                "SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM api_keys)",
                (digest, key.key_id, key.customer_id, key.plan, key.created_at, None),
            )
            return cursor.rowcount == 1

        return (key, secret) if await self._call(insert_into_empty) else None

    async def authenticate(self, secret: str) -> ApiKey:
        digest = secret_digest(secret)
        version = self._data_version()
        if version is not None and version == self._verified_at:
            known = self._verified.get(digest)
            if known is not None:
                return active_key(known)

        def find(conn: sqlite3.Connection) -> ApiKey | None:
            # The index compares hashes, so its timing reveals nothing usable about the secret.
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE secret_sha256 = ?",  # noqa: S608
                (digest,),
            ).fetchone()
            return _row_to_key(row) if row else None

        found = await self._call(find)
        # Filed under the version read *before* the lookup: a change committed meanwhile has
        # moved it, so the next call looks again. Unknown secrets are never kept (guessing
        # cannot fill memory), and the whole set is bounded.
        if version is not None and found is not None:
            if version != self._verified_at or len(self._verified) >= _VERIFIED_KEPT:
                self._verified, self._verified_at = {}, version
            self._verified[digest] = found
        return active_key(found)

    def _data_version(self) -> int | None:
        """The database's change counter as the watch connection sees it (None until the
        store has been opened by a lookup, so the file exists with its schema)."""
        if self._watch is None:
            if self._conn is None or self._closed:
                return None
            self._watch = sqlite3.connect(self._path, check_same_thread=False)
        try:
            (version,) = self._watch.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:  # closing meanwhile: the lookup answers (or says it is closed)
            return None
        return int(version)

    async def list(self) -> builtins.list[ApiKey]:
        def select(conn: sqlite3.Connection) -> builtins.list[ApiKey]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY rowid").fetchall()  # noqa: S608
            return [_row_to_key(row) for row in rows]

        return await self._call(select)

    async def revoke(self, key_id: str) -> bool:
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
        # Several processes opening a new file at once (replicas, the CLI) race to switch it to
        # WAL, which needs the file to themselves: SQLite may answer "locked" at once, without
        # waiting out the busy timeout. Try again for a few seconds.
        for attempt in range(50):
            try:
                return self._open_once()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def _open_once(self) -> sqlite3.Connection:
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
            if self._watch is not None:
                self._watch.close()
                self._watch = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None

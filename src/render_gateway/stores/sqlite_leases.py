"""``sqlite:///abs/path.db`` leases: durable, and safe across processes on one machine. Every
acquire is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken before the lease is
read, so two processes cannot both see it free). The blocking SQLite calls run in a thread,
never on the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from render_gateway.stores.leases import check_ttl

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""


class SqliteLeaseStore:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._path, self._clock = path, clock
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        self._conn: sqlite3.Connection | None = None  # opened in a thread on first use
        self._closed = False

    async def acquire(self, name: str, holder: str, ttl_seconds: float) -> bool:
        check_ttl(ttl_seconds)

        def take(conn: sqlite3.Connection) -> bool:
            now = self._clock()  # read under the write lock: no one else moves the lease now
            cursor = conn.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at "
                "WHERE leases.holder = excluded.holder OR leases.expires_at <= ?",
                (name, holder, now + ttl_seconds, now),
            )
            return cursor.rowcount == 1

        return await self._call(take, write=True)

    async def release(self, name: str, holder: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

        await self._call(delete, write=True)

    async def holder(self, name: str) -> str | None:
        def select(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT holder FROM leases WHERE name = ? AND expires_at > ?",
                (name, self._clock()),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._call(select, write=False)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _call(self, operation: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        return await asyncio.to_thread(self._run, operation, write)

    def _run(self, operation: Callable[[sqlite3.Connection], T], write: bool) -> T:
        with self._lock:
            if self._closed:
                raise RuntimeError("the lease store is closed")
            if self._conn is None:
                self._conn = self._open()
            conn = self._conn
            # A write takes the database's write lock before it reads the lease (IMMEDIATE),
            # so no other process can move the lease between this read and this write.
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = operation(conn)
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled it back itself already
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode, so the explicit BEGIN IMMEDIATE above is the only transaction; a
        # busy timeout, so a process waits for another's short write rather than failing.
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=5.0
        )
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # Renewals are rare (every ttl/3), so making each one durable costs nothing.
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

"""``sqlite:///abs/path.db`` leases: durable, and safe across processes on one machine. Every
acquire is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken before the lease is
read, so two processes cannot both see it free). The blocking SQLite calls run in a thread,
never on the event loop."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from render_gateway.stores.leases import check_ttl
from render_gateway.stores.sqlite_database import SqliteDatabase

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
        self._clock = clock
        self._db = SqliteDatabase(path, SCHEMA, "lease store")

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

        return await self._db.call(take, write=True)

    async def release(self, name: str, holder: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

        await self._db.call(delete, write=True)

    async def holder(self, name: str) -> str | None:
        def select(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT holder FROM leases WHERE name = ? AND expires_at > ?",
                (name, self._clock()),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._db.call(select, write=False)

    async def close(self) -> None:
        await self._db.close()

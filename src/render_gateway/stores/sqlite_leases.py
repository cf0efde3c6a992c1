"""``sqlite:///abs/path.db`` leases: durable, and safe across processes on one machine. Every
acquire is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken before the lease is
read, so two processes cannot both see it free). The blocking SQLite calls run in a thread,
never on the event loop.

A lease's row holds its last holder, when that holding ends and its fencing token; a release
ends the holding (``expires_at`` -inf) but keeps the row, so the token goes on growing when the
lease changes hands. Files made before tokens existed gain the ``token`` column (0 for a lease
held then) on first use, in a write transaction, so two processes cannot both add it.
"""

from __future__ import annotations

import math
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
    expires_at REAL NOT NULL,
    token INTEGER NOT NULL DEFAULT 0
);
"""


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the ``token`` column to a lease table made before fencing tokens."""
    columns = {str(row[1]) for row in conn.execute("PRAGMA table_info(leases)")}
    if "token" not in columns:
        conn.execute("ALTER TABLE leases ADD COLUMN token INTEGER NOT NULL DEFAULT 0")


class SqliteLeaseStore:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._db = SqliteDatabase(path, SCHEMA, "lease store")
        self._migrated = False

    async def _call(self, operation: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        if not self._migrated:
            await self._db.call(_migrate, write=True)
            self._migrated = True
        return await self._db.call(operation, write=write)

    async def acquire(self, name: str, holder: str, ttl_seconds: float) -> bool:
        check_ttl(ttl_seconds)

        def take(conn: sqlite3.Connection) -> bool:
            now = self._clock()  # read under the write lock: no one else moves the lease now
            # SET reads the row as it was: the token grows only when the holder changes.
            cursor = conn.execute(
                "INSERT INTO leases (name, holder, expires_at, token) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at, "
                "token = CASE WHEN leases.holder = excluded.holder "
                "THEN leases.token ELSE leases.token + 1 END "
                "WHERE leases.holder = excluded.holder OR leases.expires_at <= ?",
                (name, holder, now + ttl_seconds, now),
            )
            return cursor.rowcount == 1

        return await self._call(take, write=True)

    async def release(self, name: str, holder: str) -> None:
        def end(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ?",
                (-math.inf, name, holder),
            )

        await self._call(end, write=True)

    async def holder(self, name: str) -> str | None:
        def select(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT holder FROM leases WHERE name = ? AND expires_at > ?",
                (name, self._clock()),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._call(select, write=False)

    async def token(self, name: str, holder: str) -> int | None:
        def select(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT token FROM leases WHERE name = ? AND holder = ? AND expires_at > ?",
                (name, holder, self._clock()),
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._call(select, write=False)

    async def close(self) -> None:
        await self._db.close()

"""``sqlite:///abs/path.db`` webhook deliveries: durable, and safe across processes on one
machine. WAL mode; every operation is one transaction, and every write takes the write lock
first (``BEGIN IMMEDIATE``), so a claim's read and its lease are one atomic step that no other
process can split. The blocking SQLite calls run in a thread, never on the event loop."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from render_gateway.stores.sqlite_database import SqliteDatabase
from render_gateway.stores.webhooks import KEEP_FINISHED_SECONDS, PendingDelivery, check_claim

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at, created_at, id);
CREATE TABLE IF NOT EXISTS finished (
    id TEXT PRIMARY KEY,
    delivered INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    detail TEXT NOT NULL,
    finished_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS finished_by_time ON finished (finished_at);
"""


class SqliteWebhookDeliveries:
    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        keep_finished_seconds: float = KEEP_FINISHED_SECONDS,
    ) -> None:
        self._clock, self._keep_finished = clock, keep_finished_seconds
        self._db = SqliteDatabase(path, SCHEMA, "webhook store")

    async def enqueue(self, delivery_id: str, url: str, body: bytes, now: float) -> bool:
        def insert(conn: sqlite3.Connection) -> bool:
            self._forget_old_finished(conn)
            if conn.execute("SELECT 1 FROM finished WHERE id = ?", (delivery_id,)).fetchone():
                return False
            cursor = conn.execute(
                "INSERT INTO deliveries (id, url, body, next_attempt_at, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (delivery_id, url, body, now, now),
            )
            return cursor.rowcount == 1

        return await self._db.call(insert, write=True)

    async def claim_due(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[PendingDelivery]:
        check_claim(limit, lease_seconds)
        leased_until = now + lease_seconds

        def claim(conn: sqlite3.Connection) -> list[PendingDelivery]:
            rows = conn.execute(
                "SELECT id, url, body, attempts, created_at FROM deliveries "
                "WHERE next_attempt_at <= ? ORDER BY next_attempt_at, created_at, id LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE deliveries SET next_attempt_at = ? WHERE id = ?",
                [(leased_until, row[0]) for row in rows],
            )
            return [
                PendingDelivery(row[0], row[1], bytes(row[2]), row[3], leased_until, row[4])
                for row in rows
            ]

        return await self._db.call(claim, write=True)

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, last_error: str
    ) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE deliveries SET attempts = ?, next_attempt_at = ?, last_error = ? "
                "WHERE id = ?",
                (attempts, next_attempt_at, last_error, delivery_id),
            )

        await self._db.call(update, write=True)

    async def finish(self, delivery_id: str, delivered: bool, attempts: int, detail: str) -> None:
        def move(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))
            conn.execute(
                "INSERT OR REPLACE INTO finished (id, delivered, attempts, detail, finished_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (delivery_id, int(delivered), attempts, detail, self._clock()),
            )
            self._forget_old_finished(conn)

        await self._db.call(move, write=True)

    async def pending(self) -> int:
        def count(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])

        return await self._db.call(count, write=False)

    async def close(self) -> None:
        await self._db.close()

    def _forget_old_finished(self, conn: sqlite3.Connection) -> None:
        # Indexed by time: a cheap range delete inside the caller's transaction.
        horizon = self._clock() - self._keep_finished
        conn.execute("DELETE FROM finished WHERE finished_at < ?", (horizon,))

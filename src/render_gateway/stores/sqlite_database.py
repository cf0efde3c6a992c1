"""One small SQLite database used from asyncio: the shape the leases and webhook-delivery stores
share. One connection (opened in a thread on first use, WAL, ``synchronous = FULL``, a busy
timeout so a process waits for another's short write rather than failing), used by one thread
at a time; each operation is one transaction, a write one taking the database's write lock
before it reads (``BEGIN IMMEDIATE``), so two processes cannot both read a row as free and
both take it. The blocking calls run in a thread, never on the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SqliteDatabase:
    def __init__(self, path: Path, schema: str, name: str) -> None:
        self._path, self._schema, self._name = path, schema, name
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def call(self, operation: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        return await asyncio.to_thread(self._run, operation, write)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _run(self, operation: Callable[[sqlite3.Connection], T], write: bool) -> T:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self._name} is closed")
            if self._conn is None:
                self._conn = self._open()
            conn = self._conn
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
        # Autocommit mode, so the explicit BEGIN above is the only transaction.
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=5.0
        )
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # Few, small writes, each worth keeping through a power cut (a lease renewal, a
            # webhook enqueue acknowledged and then lost would be a webhook never sent).
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(self._schema)
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

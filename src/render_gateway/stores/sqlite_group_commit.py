"""Group commit for an SQLite file: one thread owns the write connection and commits whatever
operations are waiting together, so many concurrent writers share one fsync and each is
acknowledged only once its batch is on disk. The job store (jobs and the usage log) and the
assets' records each run one."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Operation = Callable[[sqlite3.Connection], Any]


@dataclass
class _Pending:
    operation: Operation
    future: Future[Any]
    after_commit: Callable[[Any], None] | None
    loop: asyncio.AbstractEventLoop | None


class GroupCommitWriter(threading.Thread):
    """Owns the connection; runs operations in batches, one commit per batch. ``migrate``
    runs once on the fresh connection (creating or upgrading the schema) before ``ready``."""

    def __init__(
        self,
        path: Path,
        synchronous: str,
        max_batch: int,
        name: str,
        migrate: Callable[[sqlite3.Connection], None],
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._path, self._synchronous, self._max_batch = path, synchronous, max_batch
        self._migrate = migrate
        self._inbox: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self.ready: Future[None] = Future()
        self.commits = 0

    def submit(
        self,
        operation: Operation,
        after_commit: Callable[[Any], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Future[Any]:
        """Queue ``operation``; its future resolves once its batch is committed. If given,
        ``after_commit(result)`` runs on ``loop`` after the commit and before the future's
        awaiter resumes (both go through the loop's FIFO of callbacks, in that order)."""
        future: Future[Any] = Future()
        self._inbox.put(_Pending(operation, future, after_commit, loop))
        return future

    def stop(self) -> None:
        self._inbox.put(None)
        self.join()

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA busy_timeout = 5000")
            self._migrate(conn)
        except Exception as exc:
            self.ready.set_exception(exc)
            return
        self.ready.set_result(None)
        with contextlib.closing(conn):
            while True:
                first = self._inbox.get()
                if first is None:
                    return
                batch = [first]
                while len(batch) < self._max_batch:
                    try:
                        item = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        self._inbox.put(None)  # finish this batch, then stop
                        break
                    batch.append(item)
                # An operation whose caller gave up before it started is not run at all; once
                # running, its future cannot be cancelled, so its outcome is always delivered.
                live = [p for p in batch if p.future.set_running_or_notify_cancel()]
                if live:
                    self._run_batch(conn, live)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        outcomes: list[tuple[_Pending, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for pending in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = pending.operation(conn)
                except Exception as exc:  # this operation only: roll back its own changes
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((pending, None, exc))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((pending, result, None))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # the commit itself failed: nothing of this batch is durable
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for pending in batch:
                pending.future.set_exception(exc)
            return
        for pending, result, error in outcomes:
            if error is None:
                if pending.after_commit is not None and pending.loop is not None:
                    with contextlib.suppress(RuntimeError):  # the loop has closed: no mirror
                        pending.loop.call_soon_threadsafe(pending.after_commit, result)
                pending.future.set_result(result)
            else:
                pending.future.set_exception(error)

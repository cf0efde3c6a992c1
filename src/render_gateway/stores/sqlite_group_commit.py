"""Group commit for an SQLite file: one thread owns the write connection and commits whatever
operations are waiting together, so many concurrent writers share one fsync and each is
acknowledged only once its batch is on disk. The job store (jobs and the usage log) and the
assets' records each run one.

An event loop's callers await :meth:`GroupCommitWriter.execute`: their batch is delivered to
the loop in one thread-safe call (after-commit steps, then results, in submission order). Going
through a ``concurrent.futures.Future`` each (a lock and a condition made per operation, then
``asyncio.wrap_future``'s chaining and one wake-up of the loop per operation) was ~10 % of the
event loop's time on ``POST /queue``."""

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


@dataclass(slots=True)
class _Pending:
    operation: Operation
    future: Future[Any] | None  # a thread's caller (submit)
    waiter: asyncio.Future[Any] | None  # an event loop's caller (execute), on ``loop``
    after_commit: Callable[[Any], None] | None
    loop: asyncio.AbstractEventLoop | None

    def claim(self) -> bool:
        """False when the caller gave up before the operation started: it is not run. (An
        awaiter's cancel is read from the writer thread: one that lands after this check
        finds the operation running, as a cancel of a running future does.)"""
        if self.future is not None:
            return self.future.set_running_or_notify_cancel()
        return self.waiter is None or not self.waiter.cancelled()


# One batch's outcomes for one loop's awaiters: (pending, result, error).
_Outcomes = list[tuple[_Pending, Any, BaseException | None]]


def _deliver(outcomes: _Outcomes) -> None:
    """On the awaiters' loop: each operation's after-commit step, then its awaiter's result
    (the step runs before the awaiter resumes, and even when it was cancelled: the step keeps
    an in-memory mirror in line with what was committed)."""
    for pending, result, error in outcomes:
        if error is None and pending.after_commit is not None:
            try:
                pending.after_commit(result)
            except Exception as exc:  # as the loop would log a failing callback: go on
                loop = asyncio.get_running_loop()
                loop.call_exception_handler({"message": "after_commit failed", "exception": exc})
        waiter = pending.waiter
        if waiter is None or waiter.done():  # cancelled meanwhile: nobody is waiting
            continue
        if error is None:
            waiter.set_result(result)
        else:
            waiter.set_exception(error)


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

    def submit(self, operation: Operation) -> Future[Any]:
        """Queue ``operation`` from a thread; its future resolves once its batch is committed.
        (An event loop's callers use :meth:`execute`, which also takes an after-commit step.)"""
        future: Future[Any] = Future()
        self._inbox.put(_Pending(operation, future, None, None, None))
        return future

    async def execute(
        self, operation: Operation, after_commit: Callable[[Any], None] | None = None
    ) -> Any:
        """Run ``operation`` in the next batch and return its result once that batch is
        committed; ``after_commit(result)`` runs on this loop first (see :func:`_deliver`)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._inbox.put(_Pending(operation, None, waiter, after_commit, loop))
        return await waiter

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
                live = [p for p in batch if p.claim()]
                if live:
                    self._run_batch(conn, live)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        outcomes: _Outcomes = []
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
            outcomes = [(pending, None, exc) for pending in batch]
        self._settle(outcomes)

    def _settle(self, outcomes: _Outcomes) -> None:
        """Hand each caller its outcome: a thread's future at once, an event loop's awaiters
        in one call on their loop (a failed commit has no after-commit steps to run)."""
        for_loops: dict[asyncio.AbstractEventLoop, _Outcomes] = {}
        for pending, result, error in outcomes:
            if pending.loop is not None:
                for_loops.setdefault(pending.loop, []).append((pending, result, error))
            elif pending.future is not None:
                if error is None:
                    pending.future.set_result(result)
                else:
                    pending.future.set_exception(error)
        for loop, delivered in for_loops.items():
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody awaits
                loop.call_soon_threadsafe(_deliver, delivered)

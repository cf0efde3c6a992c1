"""The embedded job store: SQLite in WAL mode, one writer thread, group commit.

Every change goes through one thread that owns the connection. It takes whatever operations
are waiting (up to ``max_batch``), runs each inside its own savepoint, commits them together
and only then resolves their futures: many concurrent submissions share one fsync, and a
submission is acknowledged only once it is on disk. Queue order and positions live in an
in-memory ``LaneQueue`` that is changed only after the commit it mirrors, and rebuilt from
the table on open.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from render_gateway.core.jobs import Job, JobError, JobStatus
from render_gateway.core.lanes import Lane, LaneQueue
from render_gateway.core.usage_records import UsageRecord
from render_gateway.stores.jobs import CancelResult, IdempotencyConflict, Recovery, RecoveryPolicy
from render_gateway.stores.sqlite_usage_log import USAGE_SCHEMA, SqliteUsageLog, append_usage_row

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    lane INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    retries INTEGER NOT NULL DEFAULT 0,
    seed INTEGER,
    outputs TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    idempotency_key TEXT,
    request_digest TEXT,
    expires_at REAL,
    webhook TEXT,
    request TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (customer_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, lane, seq);
"""
COLUMNS = (
    "id, seq, customer_id, lane, status, created_at, started_at, completed_at, retries, seed, "
    "outputs, error, idempotency_key, request_digest, expires_at, webhook, request, extra"
)


def _row_to_job(row: tuple[Any, ...]) -> Job:
    (job_id, _seq, customer, lane, status, created, started, completed, retries, seed,
     outputs, error, key, digest, expires, webhook, request, extra) = row  # fmt: skip
    error_fields = orjson.loads(error) if error else None
    return Job(
        id=job_id,
        customer_id=customer,
        lane=Lane(lane),
        request=orjson.loads(request),
        created_at=created,
        status=JobStatus(status),
        started_at=started,
        completed_at=completed,
        retries=retries,
        seed=seed,
        outputs=tuple(orjson.loads(outputs)),
        error=JobError(**error_fields) if error_fields else None,
        idempotency_key=key,
        request_digest=digest,
        expires_at=expires,
        webhook=webhook,
        extra=orjson.loads(extra),
    )


def _select(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()  # noqa: S608
    return _row_to_job(row) if row else None


class _Writer(threading.Thread):
    """Owns the connection; runs operations in batches, one commit per batch."""

    def __init__(self, path: Path, synchronous: str, max_batch: int) -> None:
        super().__init__(name="sqlite-jobs-writer", daemon=True)
        self._path, self._synchronous, self._max_batch = path, synchronous, max_batch
        self._inbox: queue.SimpleQueue[tuple[Operation, Future[Any]] | None] = queue.SimpleQueue()
        self.ready: Future[None] = Future()
        self.commits = 0

    def submit(self, operation: Operation) -> Future[Any]:
        future: Future[Any] = Future()
        self._inbox.put((operation, future))
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
            conn.executescript(SCHEMA + USAGE_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
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
                self._run_batch(conn, batch)

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[Operation, Future[Any]]]
    ) -> None:
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for operation, future in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = operation(conn)
                except Exception as exc:  # this operation only: roll back its own changes
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((future, None, exc))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((future, result, None))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # the commit itself failed: nothing of this batch is durable
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for _, future in batch:
                future.set_exception(exc)
            return
        for future, result, error in outcomes:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


class SqliteJobStore:
    """``sqlite:///path/to/jobs.db``: the embedded default."""

    def __init__(self, path: Path, synchronous: str = "FULL", max_batch: int = 512) -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._writer = _Writer(path, synchronous, max_batch)
        self.usage_log = SqliteUsageLog(path, self._writer.submit)
        # Reads use their own connection on their own thread: in WAL mode they see every
        # committed change and never wait behind the writer's commits.
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-jobs-reader")
        self._read_conn: sqlite3.Connection | None = None
        self._queue = LaneQueue()
        self._queued_customer: dict[str, str] = {}
        self._queued_per_customer: Counter[str] = Counter()
        self._next_seq = 0

    @property
    def commits(self) -> int:
        return self._writer.commits

    async def _call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        result: T = await asyncio.wrap_future(self._writer.submit(operation))
        return result

    # ------------------------------------------------------------------ queue mirror

    def _enqueued(self, job: Job) -> None:
        self._queue.push(job.id, job.lane)
        self._queued_customer[job.id] = job.customer_id
        self._queued_per_customer[job.customer_id] += 1

    def _dequeued(self, job_id: str) -> None:
        self._queue.remove(job_id)
        customer = self._queued_customer.pop(job_id, None)
        if customer is not None:
            self._queued_per_customer[customer] -= 1
            if not self._queued_per_customer[customer]:
                del self._queued_per_customer[customer]

    # ---------------------------------------------------------------------- protocol

    async def open(self, policy: RecoveryPolicy, max_retries: int = 2) -> Recovery:
        self._writer.start()
        await asyncio.wrap_future(self._writer.ready)

        def recover(conn: sqlite3.Connection) -> tuple[list[str], list[str], list[Job], int]:
            requeued, failed = [], []
            running = conn.execute(
                "SELECT id, retries FROM jobs WHERE status = 'running' ORDER BY seq"
            ).fetchall()
            for job_id, retries in running:
                if policy is RecoveryPolicy.requeue and retries < max_retries:
                    conn.execute(
                        "UPDATE jobs SET status = 'queued', started_at = NULL, "
                        "retries = retries + 1 WHERE id = ?",
                        (job_id,),
                    )
                    requeued.append(job_id)
                else:
                    error = orjson.dumps(
                        {
                            "code": "interrupted",
                            "retriable": True,
                            "message": "the gateway stopped while the job was running",
                        }
                    ).decode()
                    conn.execute(
                        "UPDATE jobs SET status = 'error', error = ?, "
                        "completed_at = strftime('%s', 'now') + 0.0 WHERE id = ?",
                        (error, job_id),
                    )
                    failed.append(job_id)
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE status = 'queued' ORDER BY lane, seq"  # noqa: S608
            ).fetchall()
            (top,) = conn.execute("SELECT COALESCE(MAX(seq), -1) FROM jobs").fetchone()
            return requeued, failed, [_row_to_job(r) for r in rows], int(top) + 1

        requeued, failed, queued, next_seq = await self._call(recover)
        self._next_seq = next_seq
        for job in queued:  # in (lane, seq) order: every lane keeps its FIFO order
            self._enqueued(job)
        return Recovery(tuple(requeued), tuple(failed), len(queued))

    async def close(self) -> None:
        await asyncio.to_thread(self._writer.stop)
        await asyncio.get_running_loop().run_in_executor(self._reader, self._close_reader)
        self._reader.shutdown(wait=True)

    def _close_reader(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None

    def _read_job(self, job_id: str) -> Job | None:
        if self._read_conn is None:  # opened on the reader thread, used only there
            self._read_conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False
            )
            self._read_conn.execute("PRAGMA query_only = ON")
        return _select(self._read_conn, job_id)

    async def submit(self, job: Job) -> tuple[Job, bool]:
        if job.status is not JobStatus.queued:
            raise ValueError("a new job must be queued")
        seq = self._next_seq
        self._next_seq += 1

        def insert(conn: sqlite3.Connection) -> tuple[Job, bool]:
            if job.idempotency_key is not None:
                row = conn.execute(
                    f"SELECT {COLUMNS} FROM jobs WHERE customer_id = ? AND idempotency_key = ?",  # noqa: S608
                    (job.customer_id, job.idempotency_key),
                ).fetchone()
                if row is not None:
                    existing = _row_to_job(row)
                    if existing.request_digest != job.request_digest:
                        raise IdempotencyConflict(existing)
                    return existing, False
            conn.execute(
                f"INSERT INTO jobs ({COLUMNS}) VALUES ({', '.join('?' * 18)})",  # noqa: S608
                (
                    job.id,
                    seq,
                    job.customer_id,
                    int(job.lane),
                    job.status.value,
                    job.created_at,
                    None,
                    None,
                    job.retries,
                    job.seed,
                    orjson.dumps(list(job.outputs)).decode(),
                    None,
                    job.idempotency_key,
                    job.request_digest,
                    job.expires_at,
                    job.webhook,
                    orjson.dumps(job.request).decode(),
                    orjson.dumps(job.extra).decode(),
                ),
            )
            return job, True

        stored, created = await self._call(insert)
        if created:
            self._enqueued(stored)
        return stored, created

    async def get(self, job_id: str) -> Job | None:
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, self._read_job, job_id
        )

    def position(self, job_id: str) -> int | None:
        return self._queue.position(job_id)

    def peek(self) -> str | None:
        return self._queue.peek()

    def depth(self) -> dict[str, int]:
        return {lane.name: self._queue.depth(lane) for lane in Lane}

    def queued_for(self, customer_id: str) -> int:
        return self._queued_per_customer.get(customer_id, 0)

    async def claim_next(self, now: float) -> Job | None:
        while (job_id := self._queue.pop()) is not None:
            self._dequeued(job_id)

            def start(conn: sqlite3.Connection, job_id: str = job_id) -> Job | None:
                changed = conn.execute(
                    "UPDATE jobs SET status = 'running', started_at = ? "
                    "WHERE id = ? AND status = 'queued'",
                    (now, job_id),
                ).rowcount
                return _select(conn, job_id) if changed else None

            job = await self._call(start)
            if job is not None:
                return job
            # Cancelled or expired between the pop and the write: take the next one.
        return None

    async def cancel(self, job_id: str, customer_id: str, now: float) -> CancelResult:
        def cancel(conn: sqlite3.Connection) -> CancelResult:
            row = conn.execute(
                "SELECT status, customer_id FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None or row[1] != customer_id:
                return CancelResult.not_found
            status = JobStatus(row[0])
            if status is JobStatus.queued:
                conn.execute(
                    "UPDATE jobs SET status = 'cancelled', completed_at = ? WHERE id = ?",
                    (now, job_id),
                )
                return CancelResult.cancelled
            if status is JobStatus.running:
                return CancelResult.running
            return CancelResult.terminal

        result = await self._call(cancel)
        if result is CancelResult.cancelled:
            self._dequeued(job_id)
        return result

    async def finish(
        self,
        job_id: str,
        status: JobStatus,
        now: float,
        outputs: tuple[str, ...] = (),
        error: JobError | None = None,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
        usage: UsageRecord | None = None,
    ) -> Job:
        if not status.terminal:
            raise ValueError(f"finish needs a terminal status, not {status}")
        error_text = (
            orjson.dumps(
                {"code": error.code, "message": error.message, "retriable": error.retriable}
            ).decode()
            if error
            else None
        )

        def settle(conn: sqlite3.Connection) -> Job:
            changed = conn.execute(
                "UPDATE jobs SET status = ?, completed_at = ?, outputs = ?, error = ?, "
                "seed = COALESCE(?, seed), extra = json_patch(extra, ?) "
                "WHERE id = ? AND status = 'running'",
                (
                    status.value,
                    now,
                    orjson.dumps(list(outputs)).decode(),
                    error_text,
                    seed,
                    orjson.dumps(extra or {}).decode(),
                    job_id,
                ),
            ).rowcount
            job = _select(conn, job_id)
            if job is None:
                raise KeyError(job_id)
            if not changed:
                raise ValueError(f"job {job_id} is {job.status}, not running")
            if usage is not None:
                append_usage_row(conn, usage)
            return job

        return await self._call(settle)

    async def requeue(self, job_id: str, extra: dict[str, Any] | None = None) -> Job | None:
        def put_back(conn: sqlite3.Connection) -> Job | None:
            changed = conn.execute(
                "UPDATE jobs SET status = 'queued', started_at = NULL, "
                "extra = json_patch(extra, ?) WHERE id = ? AND status = 'running'",
                (orjson.dumps(extra or {}).decode(), job_id),
            ).rowcount
            return _select(conn, job_id) if changed else None

        job = await self._call(put_back)
        if job is not None:
            # Here it joins its lane's tail; its seq is unchanged, so the next start (which
            # rebuilds the queue by seq) puts it back ahead of the jobs that came after it.
            self._enqueued(job)
        return job

    async def unsettled(self) -> list[Job]:
        """Jobs admitted but not finished (queued or running), oldest first."""

        def select(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY seq"  # noqa: S608
            )
            return [_row_to_job(r) for r in rows]

        return await self._call(select)

    async def expire(self, now: float) -> list[str]:
        def sweep(conn: sqlite3.Connection) -> list[str]:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM jobs WHERE status = 'queued' AND expires_at <= ?", (now,)
                )
            ]
            error = orjson.dumps(
                {
                    "code": "ttl_expired",
                    "message": "the job's ttl passed while it was queued",
                    "retriable": False,
                }
            ).decode()
            conn.executemany(
                "UPDATE jobs SET status = 'cancelled', completed_at = ?, error = ? "
                "WHERE id = ? AND status = 'queued'",
                [(now, error, job_id) for job_id in ids],
            )
            return ids

        expired = await self._call(sweep)
        for job_id in expired:
            self._dequeued(job_id)
        return expired

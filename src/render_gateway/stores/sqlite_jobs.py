"""The embedded job store: SQLite in WAL mode, one writer thread, group commit.

Every change goes through one thread that owns the connection. It takes whatever operations
are waiting (up to ``max_batch``), runs each inside its own savepoint, commits them together
and only then resolves their futures: many concurrent submissions share one fsync, and a
submission is acknowledged only once it is on disk.

Queue order and positions live in an in-memory ``LaneQueue`` (the mirror) on the event loop.
It changes only through each operation's ``after_commit`` step, which the writer hands to the
loop right after the commit, in commit order and before the operation's caller resumes. So the
mirror is always the committed state after some prefix of commits, whether or not the caller
is still waiting (a cancelled request cannot leave a committed job out of the queue), and it is
rebuilt from the table on open.

Depth limits are checked in the writer, inside the submit's own savepoint, against counters in
the file (``queue_depths``, ``queue_total``) that triggers keep equal to the queued rows: the
check and the insert are one step of one thread, so concurrent submissions can never overshoot
a limit, and a rolled-back operation rolls its count back with it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from render_gateway.core.jobs import Job, JobError, JobStatus, route_key
from render_gateway.core.lanes import Lane, LaneQueue
from render_gateway.core.usage_records import UsageRecord
from render_gateway.stores.jobs import (
    CancelResult,
    IdempotencyConflict,
    JobFilter,
    LaneSnapshot,
    Opened,
    QueueFull,
    QueueSnapshot,
    check_finish,
)
from render_gateway.stores.sqlite_group_commit import GroupCommitWriter
from render_gateway.stores.sqlite_usage_log import (
    USAGE_SCHEMA,
    SqliteUsageStream,
    append_usage_row,
)

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]

# 1: jobs and the usage log. 2: cancel_requested, run leases (lease_holder, lease_until), the
# queued counters behind the depth limits, an index for ttl sweeps. 3: the ``unfollowed`` table
# (ended jobs whose follow-ups are not confirmed: JobStore.unfollowed).
SCHEMA_VERSION = 3
TABLES = """
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
    extra TEXT NOT NULL DEFAULT '{}',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    lease_holder TEXT,
    lease_until REAL
);
"""
# Columns schema 2 added, as ALTER TABLE clauses for a schema 1 file.
ADDED_COLUMNS = {
    "cancel_requested": "cancel_requested INTEGER NOT NULL DEFAULT 0",
    "lease_holder": "lease_holder TEXT",
    "lease_until": "lease_until REAL",
}
INDEXES_AND_TRIGGERS = """
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (customer_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, lane, seq);
CREATE INDEX IF NOT EXISTS jobs_queued_expiry
    ON jobs (expires_at) WHERE status = 'queued' AND expires_at IS NOT NULL;
-- A customer's jobs of one modality in admission order (JobStore.listed). An index only, not a
-- schema change: an older build reads and writes the file as before, keeping it up to date.
CREATE INDEX IF NOT EXISTS jobs_listed
    ON jobs (customer_id, json_extract(request, '$.modality'), seq);
-- A customer's jobs of every modality in admission order (GET /jobs); every customer's is the
-- seq column's own unique index. An index only, as jobs_listed.
CREATE INDEX IF NOT EXISTS jobs_by_customer ON jobs (customer_id, seq);

-- Ended jobs whose follow-ups (terminal event, budget, webhook) are not confirmed yet.
CREATE TABLE IF NOT EXISTS unfollowed (
    job_id TEXT PRIMARY KEY,
    ended_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS unfollowed_by_end ON unfollowed (ended_at);

CREATE TABLE IF NOT EXISTS queue_depths (
    customer_id TEXT PRIMARY KEY,
    queued INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue_total (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    queued INTEGER NOT NULL
);
-- Triggers, not code in each operation, keep the counters equal to the queued rows: every
-- statement that moves a job into or out of 'queued' counts, including ones added later.
CREATE TRIGGER IF NOT EXISTS jobs_count_insert AFTER INSERT ON jobs
WHEN NEW.status = 'queued' BEGIN
    INSERT INTO queue_depths (customer_id, queued) VALUES (NEW.customer_id, 1)
        ON CONFLICT (customer_id) DO UPDATE SET queued = queued + 1;
    UPDATE queue_total SET queued = queued + 1;
END;
CREATE TRIGGER IF NOT EXISTS jobs_count_enter AFTER UPDATE OF status ON jobs
WHEN NEW.status = 'queued' AND OLD.status != 'queued' BEGIN
    INSERT INTO queue_depths (customer_id, queued) VALUES (NEW.customer_id, 1)
        ON CONFLICT (customer_id) DO UPDATE SET queued = queued + 1;
    UPDATE queue_total SET queued = queued + 1;
END;
CREATE TRIGGER IF NOT EXISTS jobs_count_leave AFTER UPDATE OF status ON jobs
WHEN OLD.status = 'queued' AND NEW.status != 'queued' BEGIN
    UPDATE queue_depths SET queued = queued - 1 WHERE customer_id = OLD.customer_id;
    UPDATE queue_total SET queued = queued - 1;
END;
CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs
WHEN OLD.status = 'queued' BEGIN
    UPDATE queue_depths SET queued = queued - 1 WHERE customer_id = OLD.customer_id;
    UPDATE queue_total SET queued = queued - 1;
END;
"""
COLUMNS = (
    "id, seq, customer_id, lane, status, created_at, started_at, completed_at, retries, seed, "
    "outputs, error, idempotency_key, request_digest, expires_at, webhook, request, extra, "
    "cancel_requested"
)
_INSERT_COLUMNS = COLUMNS.count(",") + 1
# What a read selects: the stored job, and who holds its run (Job.run_holder).
COLS = COLUMNS + ", lease_holder"


def _row_to_job(row: tuple[Any, ...]) -> Job:
    (job_id, _seq, customer, lane, status, created, started, completed, retries, seed, outputs,
     error, key, digest, expires, webhook, request, extra, cancel, holder) = row  # fmt: skip
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
        cancel_requested=bool(cancel),
        run_holder=holder if status == "running" else None,
    )


def _select(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(f"SELECT {COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()  # noqa: S608
    return _row_to_job(row) if row else None


def _error_json(error: JobError | None) -> str | None:
    if error is None:
        return None
    fields = {"code": error.code, "message": error.message, "retriable": error.retriable}
    return orjson.dumps(fields).decode()


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a new, schema 1, 2 or 3 file to schema 3. Each step is idempotent (IF NOT
    EXISTS, a column added only if missing), so a migration cut short resumes on the next open;
    a file from a newer build is refused rather than written to."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the job store file has schema {version}; this build reads up to {SCHEMA_VERSION}"
        )
    conn.executescript(TABLES + USAGE_SCHEMA)
    present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for name, definition in ADDED_COLUMNS.items():
        if name not in present:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {definition}")
    conn.executescript(INDEXES_AND_TRIGGERS)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _recount(conn: sqlite3.Connection) -> None:
    """Set the queued counters from the rows (inside a batch's transaction). Done at every open:
    a schema 1 file has none, and it costs what the queue rebuild costs anyway."""
    conn.execute("DELETE FROM queue_depths")
    conn.execute(
        "INSERT INTO queue_depths (customer_id, queued) "
        "SELECT customer_id, COUNT(*) FROM jobs WHERE status = 'queued' GROUP BY customer_id"
    )
    conn.execute(
        "INSERT INTO queue_total (id, queued) "
        "VALUES (0, (SELECT COUNT(*) FROM jobs WHERE status = 'queued')) "
        "ON CONFLICT (id) DO UPDATE SET queued = excluded.queued"
    )


class SqliteJobStore:
    """``sqlite:///path/to/jobs.db``: the embedded default, owned by one process."""

    def __init__(self, path: Path, synchronous: str = "FULL", max_batch: int = 512) -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._writer = GroupCommitWriter(
            path, synchronous, max_batch, "sqlite-jobs-writer", migrate
        )
        self.usage_log = SqliteUsageStream(path, self._writer)
        # Reads use their own connection on their own thread: in WAL mode they see every
        # committed change and never wait behind the writer's commits.
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-jobs-reader")
        self._read_conn: sqlite3.Connection | None = None
        # The mirror (changed only by after_commit steps, on the loop).
        self._queue = LaneQueue()
        self._queued: dict[str, tuple[str, str]] = {}  # queued job id -> (customer, route key)
        self._queued_per_customer: Counter[str] = Counter()
        self._next_seq = 0

    @property
    def commits(self) -> int:
        return self._writer.commits

    async def _call(
        self,
        operation: Callable[[sqlite3.Connection], T],
        after_commit: Callable[[T], None] | None = None,
    ) -> T:
        result: T = await self._writer.execute(operation, after_commit)
        return result

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._run_read, query)

    def _run_read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        if self._read_conn is None:  # opened on the reader thread, used only there
            self._read_conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False
            )
            self._read_conn.execute("PRAGMA query_only = ON")
        return query(self._read_conn)

    # ------------------------------------------------------------------ the mirror

    def _enqueued(self, job: Job, *, put_back: bool = False) -> None:
        if not (put_back and self._queue.put_back(job.id)):
            # A requeued job always has its place kept here (every running job was taken from
            # this queue or reserved at open); a plain push is only the fallback.
            self._queue.push(job.id, job.lane)
        self._queued[job.id] = (job.customer_id, route_key(job.request))
        self._queued_per_customer[job.customer_id] += 1

    def _left_queue(self, job_id: str, *, to_run: bool) -> None:
        if to_run:
            self._queue.take(job_id)
        else:
            self._queue.remove(job_id)
        entry = self._queued.pop(job_id, None)
        if entry is not None:
            customer = entry[0]
            self._queued_per_customer[customer] -= 1
            if not self._queued_per_customer[customer]:
                del self._queued_per_customer[customer]

    # ---------------------------------------------------------------------- protocol

    async def open(self) -> Opened:
        self._writer.start()
        await asyncio.wrap_future(self._writer.ready)

        def load(conn: sqlite3.Connection) -> tuple[list[tuple[int, Job]], int]:
            _recount(conn)
            rows = conn.execute(
                f"SELECT {COLS} FROM jobs WHERE status IN ('queued', 'running') "  # noqa: S608
                "ORDER BY lane, seq"
            ).fetchall()
            (top,) = conn.execute("SELECT COALESCE(MAX(seq), -1) FROM jobs").fetchone()
            return [(row[1], _row_to_job(row)) for row in rows], int(top) + 1

        unsettled, self._next_seq = await self._call(load)
        orphaned = []
        for seq, job in unsettled:  # in (lane, seq) order: every lane keeps its FIFO order
            self._enqueued(job)
            if job.status is JobStatus.running:
                # Its run died with the last process; it keeps its place in its lane, so a
                # requeue puts it back ahead of the jobs admitted after it.
                self._left_queue(job.id, to_run=True)
                orphaned.append((seq, job))
        orphaned.sort(key=lambda entry: entry[0])
        return Opened(tuple(job for _seq, job in orphaned), len(self._queue))

    async def close(self) -> None:
        await asyncio.to_thread(self._writer.stop)
        await asyncio.get_running_loop().run_in_executor(self._reader, self._close_reader)
        self._reader.shutdown(wait=True)

    def _close_reader(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None

    async def submit(
        self, job: Job, *, max_queued_for_customer: int, max_queued_total: int
    ) -> tuple[Job, bool]:
        if job.status is not JobStatus.queued:
            raise ValueError("a new job must be queued")
        route_key(job.request)  # a job the queue could not route is refused before it is stored
        # Taken before the operation is queued, so seq order is inbox order is commit order.
        seq = self._next_seq
        self._next_seq += 1

        def insert(conn: sqlite3.Connection) -> tuple[Job, bool]:
            if job.idempotency_key is not None:
                row = conn.execute(
                    f"SELECT {COLS} FROM jobs WHERE customer_id = ? AND idempotency_key = ?",  # noqa: S608
                    (job.customer_id, job.idempotency_key),
                ).fetchone()
                if row is not None:
                    existing = _row_to_job(row)
                    if existing.request_digest != job.request_digest:
                        raise IdempotencyConflict(existing)
                    return existing, False
            # The limits are read and the row written by this one thread in one savepoint:
            # no other admission can come between the check and the insert.
            customer_row = conn.execute(
                "SELECT queued FROM queue_depths WHERE customer_id = ?", (job.customer_id,)
            ).fetchone()
            if (customer_row[0] if customer_row else 0) >= max_queued_for_customer:
                raise QueueFull("customer", max_queued_for_customer)
            (total,) = conn.execute("SELECT queued FROM queue_total").fetchone()
            if total >= max_queued_total:
                raise QueueFull("total", max_queued_total)
            conn.execute(
                f"INSERT INTO jobs ({COLUMNS}) VALUES ({', '.join('?' * _INSERT_COLUMNS)})",  # noqa: S608
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
                    int(job.cancel_requested),
                ),
            )
            return job, True

        def mirror(outcome: tuple[Job, bool]) -> None:
            stored, created = outcome
            if created:
                self._enqueued(stored)

        return await self._call(insert, mirror)

    async def get(self, job_id: str) -> Job | None:
        return await self._read(lambda conn: _select(conn, job_id))

    async def position(self, job_id: str) -> int | None:
        return self._queue.position(job_id)

    async def depth(self) -> dict[str, int]:
        return {lane.name: self._queue.depth(lane) for lane in Lane}

    async def queued_for(self, customer_id: str) -> int:
        return self._queued_per_customer.get(customer_id, 0)

    async def claim(
        self,
        now: float,
        *,
        runnable: frozenset[str],
        served: frozenset[str],
        holder: str,
        lease_seconds: float,
    ) -> Job | None:
        # The head and its route are read from the mirror, so a head that must wait costs no
        # trip to the writer. The write is conditional on that job still being the head of the
        # table's queue, which the writer checks and changes in one step (it is the only thread
        # that writes): the claim is atomic. If another commit changed the head meanwhile (a
        # cancel, a ttl, a requeue ahead of it, a higher-priority admission), its after_commit
        # step has reached the mirror before this coroutine resumes, so the retry sees it.
        lease_until = now + lease_seconds
        while (head := self._queue.peek()) is not None:
            _customer, route = self._queued[head]
            if route not in runnable and route in served:
                return None  # head of line: it waits for its own route; nothing overtakes it

            def start(conn: sqlite3.Connection, job_id: str = head) -> Job | None:
                changed = conn.execute(
                    "UPDATE jobs SET status = 'running', started_at = ?, lease_holder = ?, "
                    "lease_until = ? WHERE id = ? AND id = (SELECT id FROM jobs "
                    "WHERE status = 'queued' ORDER BY lane, seq LIMIT 1)",
                    (now, holder, lease_until, job_id),
                ).rowcount
                return _select(conn, job_id) if changed else None

            def mirror(job: Job | None) -> None:
                if job is not None:
                    self._left_queue(job.id, to_run=True)

            claimed = await self._call(start, mirror)
            if claimed is not None:
                return claimed
            if self._queue.peek() == head:  # only a mirror out of step could do this: never spin
                raise RuntimeError(f"the queue mirror disagrees with the table about {head}")
        return None

    async def heartbeat(
        self, job_ids: Collection[str], holder: str, now: float, lease_seconds: float
    ) -> set[str]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return set()

        def renew(conn: sqlite3.Connection) -> set[str]:
            held = set()
            for job_id in ids:
                changed = conn.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND status = 'running' "
                    "AND lease_holder = ? AND lease_until >= ?",
                    (now + lease_seconds, job_id, holder, now),
                ).rowcount
                if changed:
                    held.add(job_id)
            return held

        return await self._call(renew)

    async def expired_runs(self, now: float) -> list[Job]:
        def select(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"SELECT {COLS} FROM jobs WHERE status = 'running' AND lease_until < ? "  # noqa: S608
                "ORDER BY seq",
                (now,),
            )
            return [_row_to_job(r) for r in rows]

        return await self._read(select)

    async def request_cancel(self, job_id: str, customer_id: str) -> CancelResult:
        def mark(conn: sqlite3.Connection) -> CancelResult:
            row = conn.execute(
                "SELECT status, customer_id FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None or row[1] != customer_id:
                return CancelResult.not_found
            status = JobStatus(row[0])
            if status.terminal:
                return CancelResult.terminal
            conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return CancelResult.queued if status is JobStatus.queued else CancelResult.running

        return await self._call(mark)

    async def finish(
        self,
        job_id: str,
        status: JobStatus,
        now: float,
        *,
        expect: frozenset[JobStatus],
        outputs: tuple[str, ...] = (),
        error: JobError | None = None,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
        usage: UsageRecord | None = None,
        holder: str | None = None,
    ) -> Job | None:
        check_finish(status, expect)
        error_text = _error_json(error)

        def settle(conn: sqlite3.Connection) -> tuple[JobStatus, Job] | None:
            row = conn.execute(
                "SELECT status, lease_holder FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise KeyError(job_id)
            before = JobStatus(row[0])
            if before not in expect:
                return None  # settled, claimed or requeued by another path first
            if holder is not None and before is JobStatus.running and row[1] != holder:
                return None  # a late result of a run that another holder took over
            conn.execute(
                "UPDATE jobs SET status = ?, completed_at = ?, outputs = ?, error = ?, "
                "seed = COALESCE(?, seed), extra = json_patch(extra, ?), lease_holder = NULL, "
                "lease_until = NULL WHERE id = ?",
                (
                    status.value,
                    now,
                    orjson.dumps(list(outputs)).decode(),
                    error_text,
                    seed,
                    orjson.dumps(extra or {}).decode(),
                    job_id,
                ),
            )
            if usage is not None:
                append_usage_row(conn, usage)
            conn.execute(
                "INSERT OR REPLACE INTO unfollowed (job_id, ended_at) VALUES (?, ?)", (job_id, now)
            )
            job = _select(conn, job_id)
            assert job is not None
            return before, job

        def mirror(outcome: tuple[JobStatus, Job] | None) -> None:
            if outcome is None:
                return
            before, _job = outcome
            if before is JobStatus.queued:
                self._left_queue(job_id, to_run=False)
            else:
                self._queue.drop(job_id)  # its run ended for good: no place to come back to

        outcome = await self._call(settle, mirror)
        return None if outcome is None else outcome[1]

    async def unfollowed(self, ended_before: float, limit: int) -> list[Job]:
        def select(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"SELECT {COLS} FROM unfollowed u JOIN jobs ON jobs.id = u.job_id "  # noqa: S608
                "WHERE u.ended_at < ? ORDER BY u.ended_at LIMIT ?",
                (ended_before, limit),
            )
            return [_row_to_job(r) for r in rows]

        return await self._read(select)

    async def followed_up(self, job_id: str) -> None:
        def forget(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM unfollowed WHERE job_id = ?", (job_id,))

        await self._call(forget)

    async def requeue(
        self,
        job_id: str,
        *,
        extra: dict[str, Any] | None = None,
        count_retry: bool,
        holder: str | None = None,
    ) -> Job | None:
        def put_back(conn: sqlite3.Connection) -> Job | None:
            changed = conn.execute(
                "UPDATE jobs SET status = 'queued', started_at = NULL, lease_holder = NULL, "
                "lease_until = NULL, retries = retries + ?, extra = json_patch(extra, ?) "
                "WHERE id = ? AND status = 'running' AND (? IS NULL OR lease_holder = ?)",
                (int(count_retry), orjson.dumps(extra or {}).decode(), job_id, holder, holder),
            ).rowcount
            return _select(conn, job_id) if changed else None

        def mirror(job: Job | None) -> None:
            if job is not None:
                self._enqueued(job, put_back=True)

        return await self._call(put_back, mirror)

    async def unsettled(self) -> list[Job]:
        def select(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"SELECT {COLS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY seq"  # noqa: S608
            )
            return [_row_to_job(r) for r in rows]

        return await self._read(select)

    async def listed(
        self, where: JobFilter, *, after: str | None, limit: int, newest_first: bool
    ) -> list[Job]:
        # The scope's terms repeat the indexes' expressions exactly, so an index serves them;
        # the other filters are checked on the rows the index walks.
        scope: list[str] = []
        scope_args: list[Any] = []
        if where.customer_id is not None:
            scope.append("customer_id = ?")
            scope_args.append(where.customer_id)
        if where.modality is not None:
            scope.append("json_extract(request, '$.modality') = ?")
            scope_args.append(where.modality)
        narrow: list[str] = []
        narrow_args: list[Any] = []
        for term, value in (
            ("status = ?", None if where.status is None else where.status.value),
            ("json_extract(request, '$.family') = ?", where.family),
            ("json_extract(request, '$.model') = ?", where.model),
            ("created_at >= ?", where.created_from),
            ("created_at < ?", where.created_before),
        ):
            if value is not None:
                narrow.append(term)
                narrow_args.append(value)
        direction, beyond = ("DESC", "<") if newest_first else ("ASC", ">")

        def select(conn: sqlite3.Connection) -> list[Job]:
            terms, arguments = [*scope, *narrow], [*scope_args, *narrow_args]
            if after is not None:
                row = conn.execute(
                    f"SELECT seq FROM jobs WHERE {' AND '.join(['id = ?', *scope])}",  # noqa: S608
                    (after, *scope_args),
                ).fetchone()
                if row is None:
                    raise KeyError(after)
                terms.append(f"seq {beyond} ?")
                arguments.append(row[0])
            clause = f"WHERE {' AND '.join(terms)} " if terms else ""
            rows = conn.execute(
                f"SELECT {COLS} FROM jobs {clause}ORDER BY seq {direction} LIMIT ?",  # noqa: S608
                (*arguments, max(limit, 0)),
            )
            return [_row_to_job(r) for r in rows]

        return await self._read(select)

    async def queue_snapshot(self) -> QueueSnapshot:
        def select(conn: sqlite3.Connection) -> tuple[dict[str, float | None], int]:
            oldest: dict[str, float | None] = {}
            for lane in Lane:  # each lane's head by jobs_by_status (status, lane, seq)
                row = conn.execute(
                    "SELECT created_at FROM jobs WHERE status = 'queued' AND lane = ? "
                    "ORDER BY seq LIMIT 1",
                    (int(lane),),
                ).fetchone()
                oldest[lane.name] = None if row is None else row[0]
            (running,) = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'running'"
            ).fetchone()
            return oldest, int(running)

        oldest, running = await self._read(select)
        lanes = {
            lane.name: LaneSnapshot(self._queue.depth(lane), oldest[lane.name]) for lane in Lane
        }
        return QueueSnapshot(lanes, running)

    async def expired_queued(self, now: float) -> list[str]:
        def select(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT id FROM jobs WHERE status = 'queued' AND expires_at <= ? ORDER BY seq",
                (now,),
            )
            return [row[0] for row in rows]

        return await self._read(select)

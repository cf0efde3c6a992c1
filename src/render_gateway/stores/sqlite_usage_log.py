"""The usage stream in the job store's SQLite file (same writer thread, so a job's record
commits with its final status). Sequence numbers are SQLite row ids: one writer assigns them in
commit order, so a reader that sees record n has seen every record before it."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from render_gateway.core.months import month_of
from render_gateway.core.usage_records import UsageRecord
from render_gateway.stores.sqlite_group_commit import GroupCommitWriter
from render_gateway.stores.usage_log import (
    USAGE_GROUPS,
    LoggedUsage,
    MonthUsage,
    UsageAlreadyLogged,
)

USAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    month TEXT NOT NULL,
    timestamp REAL NOT NULL,
    billable INTEGER NOT NULL,
    gpu_seconds REAL NOT NULL,
    cost_nanos INTEGER NOT NULL,
    record BLOB NOT NULL,
    claim TEXT
);
CREATE INDEX IF NOT EXISTS usage_by_month ON usage_log (month, customer_id);
CREATE TABLE IF NOT EXISTS usage_cursors (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""

# A group's position is a scalar subquery on its name (0 before its first ack): evaluated once,
# so a group's read is one range scan of the row ids.
_POSITION_SQL = "SELECT COALESCE((SELECT seq FROM usage_cursors WHERE consumer = ?), 0)"
_READ_GROUP_SQL = (
    "SELECT seq, record, claim FROM usage_log"
    " WHERE seq > COALESCE((SELECT seq FROM usage_cursors WHERE consumer = ?), 0)"
    " ORDER BY seq LIMIT ?"
)
_READ_GROUP_JSON_SQL = (
    "SELECT seq, record FROM usage_log"
    " WHERE seq > COALESCE((SELECT seq FROM usage_cursors WHERE consumer = ?), 0)"
    " ORDER BY seq LIMIT ?"
)


def append_usage_row(conn: sqlite3.Connection, record: UsageRecord) -> int:
    """Insert inside the caller's transaction (the job's settle, or a sync request's own).
    The signed claim is kept apart from the record's JSON: the hot path never needs it."""
    fields = record.to_dict()
    claim = fields.pop("usage_claim")
    cursor = conn.execute(
        "INSERT INTO usage_log (event_id, customer_id, month, timestamp, billable, gpu_seconds, "
        "cost_nanos, record, claim) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.event_id,
            record.customer_id,
            month_of(record.timestamp),
            record.timestamp,
            int(record.billable),
            record.gpu_seconds if record.billable else 0.0,
            record.cost_nanos,
            orjson.dumps(fields),
            claim,
        ),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


class SqliteUsageStream:
    """A :class:`UsageStream` on the job store's SQLite file. Groups' positions are the rows of
    ``usage_cursors`` (the table data dirs already have: an old consumer's cursor is its
    group's position). Acks go through the job store's writer thread; reads use a connection
    per consumer thread."""

    def __init__(self, path: Path, writer: GroupCommitWriter):
        self._path = path
        self._writer = writer  # the job store's writer thread runs every write
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        """A read connection per calling thread (WAL: readers see every commit, never block)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA query_only = ON")
            conn.execute("PRAGMA busy_timeout = 5000")
            self._local.conn = conn
        return conn

    def close_thread_connection(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    async def append_usage(self, record: UsageRecord) -> int:
        try:
            seq: int = await self._writer.execute(lambda conn: append_usage_row(conn, record))
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise
            raise UsageAlreadyLogged(
                f"usage record {record.event_id} is in the stream already"
            ) from exc
        return seq

    def read_group(self, group: str, count: int) -> list[LoggedUsage]:
        rows = self._conn().execute(_READ_GROUP_SQL, (group, count))
        return [LoggedUsage(seq, _with_claim(record, claim)) for seq, record, claim in rows]

    def read_group_json(self, group: str, count: int) -> tuple[list[int], list[bytes]]:
        rows = self._conn().execute(_READ_GROUP_JSON_SQL, (group, count)).fetchall()
        return [seq for seq, _ in rows], [record for _, record in rows]

    def read_group_raw(
        self, group: str, count: int
    ) -> tuple[list[int], list[bytes], list[str | None]]:
        rows = self._conn().execute(_READ_GROUP_SQL, (group, count)).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

    def ack(self, group: str, seq: int) -> None:
        def advance(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO usage_cursors (consumer, seq) VALUES (?, ?) "
                "ON CONFLICT (consumer) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                (group, seq),
            )

        self._writer.submit(advance).result()

    def acked(self, group: str) -> int:
        (seq,) = self._conn().execute(_POSITION_SQL, (group,)).fetchone()
        return int(seq)

    def head(self) -> int:
        (head,) = self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM usage_log").fetchone()
        return int(head)

    def lag(self, group: str) -> tuple[int, float | None]:
        # Sequence numbers are dense (one writer; a failed append rolls its row id back with
        # it; nothing is deleted), so the count is a subtraction, not a scan of the backlog.
        conn = self._conn()
        position = self.acked(group)
        waiting = max(0, self.head() - position)
        if not waiting:
            return 0, None
        row = conn.execute(
            "SELECT timestamp FROM usage_log WHERE seq > ? ORDER BY seq LIMIT 1", (position,)
        ).fetchone()
        return waiting, float(row[0]) if row else None

    async def month_usage(self, month: str) -> list[MonthUsage]:
        def totals(conn: sqlite3.Connection) -> list[MonthUsage]:
            rows = conn.execute(
                "SELECT customer_id, SUM(gpu_seconds), SUM(cost_nanos) FROM usage_log "
                "WHERE month = ? AND billable = 1 GROUP BY customer_id",
                (month,),
            )
            return [MonthUsage(c, float(g), int(n)) for c, g, n in rows]

        result: list[MonthUsage] = await self._writer.execute(totals)
        return result

    def trim_acked(self, groups: Sequence[str] = USAGE_GROUPS) -> int:
        """Keeps everything (0): ``month_usage`` sums these rows (an in-process ledger is
        rebuilt from them at start), ``head`` is their highest row id, and ``lag`` counts on
        nothing being deleted. The file grows with every record, on the node's own disk rather
        than a shared Redis's memory."""
        if not groups:
            raise ValueError("trim_acked needs the groups whose acks allow a trim")
        return 0


def _with_claim(record: bytes, claim: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = orjson.loads(record)
    fields["usage_claim"] = claim
    return fields

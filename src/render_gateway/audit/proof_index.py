"""Request id → (leaf, row) for the gateway's proof lookups, so a proof reads one batch.

The index is derived data in a SQLite file beside the log key: the batcher adds each batch's
request ids after the batch is in the log, and on start it first catches up with any leaf it
missed (a crash between a leaf and its index rows, or an index deleted by hand), reading only
those batches' ``request_id`` and ``customer_id`` columns. An unknown id is one primary-key
lookup. Nothing here is trusted by a verifier: a bundle proves itself.
"""

from __future__ import annotations

import io
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from render_gateway.audit.attestations import SERIAL_READ
from render_gateway.audit.leaves import BatchLeaf
from render_gateway.audit.log import AuditLog

INDEX_FILE = Path("audit") / "proof_index.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attested (
    request_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    leaf INTEGER NOT NULL,
    row INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS indexed (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    leaves INTEGER NOT NULL
);
INSERT OR IGNORE INTO indexed (id, leaves) VALUES (0, 0);
"""


@dataclass(frozen=True)
class IndexedRow:
    leaf: int
    row: int
    customer_id: str


class ProofIndex:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:  # one connection per thread (the batcher writes, route threads read)
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # derived data: rebuilt if lost
            self._local.conn = conn
        return conn

    @property
    def leaves(self) -> int:
        """How many leaves (from the first) are indexed."""
        row = self._conn().execute("SELECT leaves FROM indexed").fetchone()
        return int(row[0])

    def add(self, audit_log: AuditLog, leaf: BatchLeaf, batch: pa.Table) -> None:
        """Index a batch just sealed into ``audit_log`` (after any leaf a failed add missed)."""
        if leaf.index > self.leaves:
            self.catch_up(audit_log)
            return
        ids, customers = (batch.column(n).to_pylist() for n in ("request_id", "customer_id"))
        self._add(leaf.index, list(zip(ids, customers, strict=True)))

    def _add(self, index: int, rows: Sequence[tuple[str, str]]) -> None:
        conn = self._conn()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            indexed = int(conn.execute("SELECT leaves FROM indexed").fetchone()[0])
            if index < indexed:
                return
            if index > indexed:
                raise ValueError(f"leaf {index} comes before leaves {indexed}…{index - 1}")
            # A request attested twice (never expected) proves its newest batch, as a scan did.
            conn.executemany(
                "INSERT OR REPLACE INTO attested (request_id, customer_id, leaf, row) "
                "VALUES (?, ?, ?, ?)",
                [(request_id, customer, index, n) for n, (request_id, customer) in enumerate(rows)],
            )
            conn.execute("UPDATE indexed SET leaves = ?", (index + 1,))

    def catch_up(self, audit_log: AuditLog) -> None:
        """Index every leaf of the opened log that is not indexed yet."""
        for leaf in audit_log.leaves[self.leaves :]:
            table = pq.read_table(
                io.BytesIO(audit_log.cas.get(leaf.batch_blake3)),
                columns=["request_id", "customer_id"],
                **SERIAL_READ,
            )
            ids, customers = (table.column(n).to_pylist() for n in ("request_id", "customer_id"))
            self._add(leaf.index, list(zip(ids, customers, strict=True)))

    def find(self, request_id: str) -> IndexedRow | None:
        found = (
            self._conn()
            .execute(
                "SELECT leaf, row, customer_id FROM attested WHERE request_id = ?", (request_id,)
            )
            .fetchone()
        )
        return None if found is None else IndexedRow(int(found[0]), int(found[1]), str(found[2]))

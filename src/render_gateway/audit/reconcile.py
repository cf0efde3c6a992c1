"""Reconciliation: the hot path (ClickHouse) against the cold path (attestation batches in CAS),
over a closed time window, named down to the request.

Both sides are aggregated per (customer, model): request count and GPU-seconds (the cold side
by DuckDB's Parquet reader, over private copies of the batches' verified bytes). Every key
whose count or GPU-seconds differ at all is drilled into. The cold side's totals are also kept
per cell — (customer, model, slice of time about one batch long, by each row's end time) — and
the hot side's events of the differing keys are put in the same cells: only the cells that
differ are drilled into, so only the batches whose time window meets one of them are read
again. There, the events of both sides are joined by event id (DuckDB), which names the
requests present on one side only, those counted twice in ClickHouse, and those whose
GPU-seconds differ. (A differing request is left unnamed only if its cell balances anyway:
another request of the same cell missing the other way with the same GPU-seconds, to 1e-9.
The key's totals balance in that case too unless something else differs in the key.) The
status is
``reconciled`` when every key's relative deltas are within ``threshold`` and ``discrepancies``
otherwise; a side that cannot be read makes the run an ``error`` — never an empty success.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from render_gateway.audit.attestations import SCHEMA, SERIAL_READ
from render_gateway.audit.cas import ContentStore, IntegrityError
from render_gateway.audit.leaves import LEAVES_PREFIX, BatchLeaf
from render_gateway.audit.private_copies import PrivateCopies
from render_gateway.metering.columns import records_to_table
from render_gateway.metering.queries import TimeRange
from render_gateway.metering.store import UsageStore
from render_gateway.stores.objects import ObjectMissing, ObjectStore

Status = Literal["reconciled", "discrepancies", "error"]
# The totals need three columns (and ``ended_at_us`` in the batches across the window's edges).
# When some key differs, the event ids are read again for the rows of those keys; request ids
# (a second string per row) only from the batches that hold a request to be named.
TOTALS_COLUMNS = ["customer_id", "model", "gpu_seconds"]
EVENT_COLUMNS = ["event_id", *TOTALS_COLUMNS]
# Columns of few distinct values, read for the totals as Arrow dictionaries: Parquet stores them
# dictionary-encoded, and decoding them to one string per row was most of the read's cost.
_DICTIONARY_COLUMNS = ("customer_id", "model")
# Batches are fetched, re-hashed and parsed on this many threads of our own (each read on its
# calling thread, SERIAL_READ): BLAKE3, the object store's read and Parquet's decoding release
# the GIL. Arrow's own pool is not used: its threads left alive abort a CLI at exit
# (apache/arrow#34314); ours are joined before reconcile returns.
_READ_THREADS = max(2, min(8, os.cpu_count() or 2))


@dataclass(frozen=True)
class KeyDelta:
    customer_id: str
    model: str
    hot_requests: int
    cold_requests: int
    hot_gpu_seconds: float
    cold_gpu_seconds: float

    @property
    def delta_requests(self) -> int:
        return self.hot_requests - self.cold_requests

    @property
    def delta_gpu_seconds(self) -> float:
        return self.hot_gpu_seconds - self.cold_gpu_seconds

    def relative(self) -> tuple[float, float]:
        """|delta| / the cold (authoritative) side; a key missing on the cold side is 100 %."""
        requests = abs(self.delta_requests) / self.cold_requests if self.cold_requests else 1.0
        gpu = abs(self.delta_gpu_seconds)
        return requests, (gpu / self.cold_gpu_seconds if self.cold_gpu_seconds else float(gpu > 0))


@dataclass
class Reconciliation:
    run_id: str
    window_start: datetime
    window_end: datetime
    threshold: float
    status: Status = "reconciled"
    error: str | None = None
    hot_requests: int = 0
    cold_requests: int = 0
    hot_gpu_seconds: float = 0.0
    cold_gpu_seconds: float = 0.0
    keys: list[KeyDelta] = field(default_factory=list)  # only keys that differ at all
    missing_in_hot: list[str] = field(default_factory=list)  # request ids, capped
    missing_in_cold: list[str] = field(default_factory=list)
    duplicated_in_hot: list[str] = field(default_factory=list)
    gpu_mismatches: list[tuple[str, float, float]] = field(default_factory=list)
    unreadable_batches: list[str] = field(default_factory=list)  # gone or altered in CAS
    counts: dict[str, int] = field(default_factory=dict)  # uncapped totals of the lists
    repaired: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["window_start"] = self.window_start.isoformat()
        data["window_end"] = self.window_end.isoformat()
        data["keys"] = [
            {**asdict(k), "delta_requests": k.delta_requests,
             "delta_gpu_seconds": k.delta_gpu_seconds,
             "relative_requests": k.relative()[0], "relative_gpu_seconds": k.relative()[1]}
            for k in self.keys
        ]  # fmt: skip
        data["gpu_mismatches"] = [
            {"request_id": r, "hot_gpu_seconds": h, "cold_gpu_seconds": c}
            for r, h, c in self.gpu_mismatches
        ]
        return data


def reconcile(
    usage: UsageStore,
    objects: ObjectStore,
    window: TimeRange,
    threshold: float = 0.001,
    cap: int = 100,
    repair: bool = False,
) -> Reconciliation:
    run = Reconciliation(uuid.uuid4().hex, window.start, window.end, threshold)
    run.counts = dict.fromkeys(_LISTS, 0)
    with (
        ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="reconcile") as pool,
        tempfile.TemporaryDirectory(prefix="reconcile-") as scratch,
        duckdb.connect() as db,
    ):
        _without_file_cache(db)
        # The hot side's aggregate runs in ClickHouse while the cold side is read here.
        hot_query = pool.submit(_hot_keys, usage, window)
        unreadable: set[int] = set()
        try:
            leaves = _window_leaves(objects, window)
            grid = _Grid.of(window, leaves)
            cold_keys, cells = _cold_keys(
                db, objects, leaves, grid, window, run, pool, Path(scratch), unreadable
            )
        except Exception as exc:  # any failure to read the authoritative side is an error
            hot_query.exception()  # waited for, whatever it did
            return _failed(run, f"the cold path (CAS) could not be read: {exc}")
        try:
            hot_keys = hot_query.result()
        except Exception as exc:
            return _failed(run, f"the hot path (ClickHouse) could not be read: {exc}")
        _compare_keys(run, hot_keys, cold_keys)
        if not run.keys:
            return run
        differing = [(k.customer_id, k.model) for k in run.keys]
        db.register("differing", pa.table({"customer_id": [c for c, _ in differing],
                                           "model": [m for _, m in differing]}))  # fmt: skip
        try:
            hot = _hot_events(usage, window, differing)
        except Exception as exc:
            return _failed(run, f"the hot path (ClickHouse) could not be read: {exc}")
        drilled = _differing_cells(db, cells, hot, grid, leaves, unreadable)
        try:
            if repair:  # every column, for the records to re-insert
                events = _cold_events(objects, window, None, run, pool=pool, leaves=drilled,
                                      keep=_of_keys(differing), batch_column=True)  # fmt: skip
            else:
                # ``run``: a batch altered or gone since the totals' pass is named too
                events = _cold_scan(
                    db, objects, drilled, window, run, pool, Path(scratch),
                    "SELECT event_id, customer_id, model, gpu_seconds, ended_at_us, batch "
                    "FROM {batches} SEMI JOIN differing USING (customer_id, model) "
                    "WHERE {in_window}",
                    _EVENTS_SCHEMA,
                )  # fmt: skip
        except Exception as exc:
            return _failed(run, f"the cold path (CAS) could not be read: {exc}")
        db.register("cold_events", events)
        try:
            _cold_k(db, objects, leaves, grid, window, pool, "request_id" in events.schema.names,
                    run)  # fmt: skip
        except Exception as exc:
            return _failed(run, f"the cold path (CAS) could not be read: {exc}")
        _name_requests(run, db, cap)
        if repair and run.counts["missing_in_hot"]:
            try:
                run.repaired = _repair(usage, db)
            except Exception as exc:
                return _failed(run, f"the repair failed: {exc}")
    return run


def _without_file_cache(db: duckdb.DuckDBPyConnection) -> None:
    """The private copies' paths are reused for other bytes (PrivateCopies), so DuckDB must
    never answer a read from a cache keyed on the path. Its external file cache skips local
    files by default (``cache_local_files``); it is turned off outright where this DuckDB has
    it (1.3 and later)."""
    with contextlib.suppress(duckdb.CatalogException):
        db.execute("SET enable_external_file_cache = false")


# Batches are checked and copied in groups of at most this many batches and (but for a group of
# one) this many records, then scanned by one DuckDB query: the private copies held at any time
# (two groups) stay bounded, about 170 MB whatever the batches' size (1.3 MB a batch of 10,000
# records), and so do the descriptors (two per batch of a group: its copy, DuckDB's read).
_SCAN_BATCHES = 64
_SCAN_RECORDS = 640_000
_CELLS_SCHEMA = pa.schema(
    [("customer_id", pa.string()), ("model", pa.string()), ("cell", pa.int64()),
     ("n", pa.int64()), ("g", pa.float64())]
)  # fmt: skip
_EVENTS_SCHEMA = pa.schema(
    [("event_id", pa.string()), ("customer_id", pa.string()), ("model", pa.string()),
     ("gpu_seconds", pa.float64()), ("ended_at_us", pa.int64()), ("batch", pa.int64())]
)  # fmt: skip


def _window_leaves(objects: ObjectStore, window: TimeRange) -> list[BatchLeaf]:
    """The leaves of the batches whose time window overlaps ``window``."""
    bounds = window.parameters()
    return [
        leaf
        for leaf in (BatchLeaf.decode(objects.get(key)) for key in objects.list(LEAVES_PREFIX))
        if not (leaf.window_end_us < bounds["start_us"] or leaf.window_start_us >= bounds["end_us"])
    ]


# Cells per batch: one per batch up to _FINE_CELLS batches, then one per _CELL_BATCHES. Finer
# cells cost the totals' pass (1 M records, 100 batches, DuckDB's part alone: 0.10 s per key;
# 0.18 s per key and batch-wide cell, 0.125 s per key and 8 batches' cell) while the drill-down
# re-reads about one cell's batches (and a neighbour) per differing cell.
_FINE_CELLS = 64
_CELL_BATCHES = 8


@dataclass(frozen=True)
class _Grid:
    """Slices of time of ``width`` microseconds from ``origin``: a row's cell is
    ``(end time - origin) // width`` on both sides. As wide as one batch's span or a few (the
    span the batches cover over the number of cells, see _CELL_BATCHES), so that a cell meets
    few batches when the batches follow time, as the usage log's do; the cells are correct
    whatever the batches hold, only the number of batches a differing cell makes the
    drill-down read depends on it."""

    origin: int
    width: int
    end: int  # the window's end (exclusive)

    @classmethod
    def of(cls, window: TimeRange, leaves: list[BatchLeaf]) -> _Grid:
        bounds = window.parameters()
        start, end = bounds["start_us"], bounds["end_us"]
        if not leaves:
            return cls(start, max(1, end - start), end)
        low = max(start, min(leaf.window_start_us for leaf in leaves))
        high = min(end, max(leaf.window_end_us for leaf in leaves) + 1)
        cells = max(min(len(leaves), _FINE_CELLS), len(leaves) // _CELL_BATCHES)
        return cls(start, max(1, -(-(high - low) // cells)), end)

    def cells_of(self, leaf: BatchLeaf) -> range:
        """The cells that rows of ``leaf`` inside the window can fall in."""
        first = max(leaf.window_start_us, self.origin)
        last = min(leaf.window_end_us, self.end - 1)
        return range((first - self.origin) // self.width, (last - self.origin) // self.width + 1)


def _cold_scan(
    db: duckdb.DuckDBPyConnection,
    objects: ObjectStore,
    leaves: list[BatchLeaf],
    window: TimeRange,
    run: Reconciliation | None,
    pool: ThreadPoolExecutor,
    scratch: Path,
    sql: str,
    schema: pa.Schema,
    params: dict[str, Any] | None = None,
    unreadable: set[int] | None = None,
) -> pa.Table:
    """``sql`` over the batches of ``leaves``, run by DuckDB's own Parquet reader (the floor's:
    threads of its own, reading only the columns and rows it needs). Each batch is fetched and
    re-hashed here, and the verified bytes are written to a private copy (PrivateCopies) that
    DuckDB reads: it parses exactly the bytes that were hashed, never the store's file again
    (which could have changed in between). Groups of _SCAN_BATCHES batches: the next group is
    fetched and copied on ``pool`` while DuckDB scans this one, into the other half of the
    slots. ``{batches}`` in ``sql`` is the group's ``read_parquet`` with a ``batch`` column
    (the leaf's index), ``{in_window}`` the window's filter on ``ended_at_us``; ``schema``:
    the result's when no batch is read; ``params``: more named parameters of ``sql``. A batch
    gone or altered is named in ``run`` and its leaf index added to ``unreadable``."""
    bounds = window.parameters()
    cas = ContentStore(objects)
    query = sql.format(
        batches="(SELECT *, $batch_of[list_position($paths, filename)] AS batch "
        "FROM read_parquet($paths, filename = true))",
        in_window="ended_at_us >= $start_us AND ended_at_us < $end_us",
    )
    groups = _groups(leaves)
    parts: list[pa.Table] = []
    with PrivateCopies(2 * _SCAN_BATCHES, scratch) as copies:

        def copy(leaf: BatchLeaf, slot: int) -> str | ObjectMissing | IntegrityError:
            try:
                return copies.write(slot, cas.get(leaf.batch_blake3))
            except (ObjectMissing, IntegrityError) as exc:
                return exc

        def start(number: int) -> list[Future[str | ObjectMissing | IntegrityError]]:
            half = (number % 2) * _SCAN_BATCHES
            return [pool.submit(copy, leaf, half + i) for i, leaf in enumerate(groups[number])]

        pending = start(0) if groups else []
        try:
            for number, group in enumerate(groups):
                results = [future.result() for future in pending]
                # The other half's last reader (the previous query) has finished: refill it.
                pending = start(number + 1) if number + 1 < len(groups) else []
                paths, batch_of = [], []
                for leaf, result in zip(group, results, strict=True):
                    if isinstance(result, str):
                        paths.append(result)
                        batch_of.append(leaf.index)
                        continue
                    if unreadable is not None:
                        unreadable.add(leaf.index)
                    if run is not None:
                        run.unreadable_batches.append(
                            f"leaf {leaf.index} (batch {leaf.batch_blake3}): {result}"
                        )
                        run.status = "discrepancies"
                if paths:
                    bound = {"paths": paths, "batch_of": batch_of, "start_us": bounds["start_us"],
                             "end_us": bounds["end_us"], **(params or {})}  # fmt: skip
                    parts.append(db.sql(query, params=bound).to_arrow_table())
        finally:
            wait(pending)  # no copy may still be writing when the slots are closed
    if not parts:
        return schema.empty_table()
    return pa.concat_tables([part.cast(schema) for part in parts])


def _groups(leaves: list[BatchLeaf]) -> list[list[BatchLeaf]]:
    """``leaves`` in order, cut into groups of at most _SCAN_BATCHES batches and _SCAN_RECORDS
    records (a batch larger than that is a group of its own)."""
    groups: list[list[BatchLeaf]] = []
    records = 0
    for leaf in leaves:
        if groups and len(groups[-1]) < _SCAN_BATCHES and records + leaf.count <= _SCAN_RECORDS:
            groups[-1].append(leaf)
            records += leaf.count
        else:
            groups.append([leaf])
            records = leaf.count
    return groups


def _cold_keys(
    db: duckdb.DuckDBPyConnection,
    objects: ObjectStore,
    leaves: list[BatchLeaf],
    grid: _Grid,
    window: TimeRange,
    run: Reconciliation,
    pool: ThreadPoolExecutor,
    scratch: Path,
    unreadable: set[int] | None = None,
) -> tuple[dict[tuple[str, str], tuple[int, float]], pa.Table]:
    """Requests and GPU-seconds per (customer, model) of the cold side, over the window, and
    per cell of ``grid`` (a table of ``_CELLS_SCHEMA``; a cell across two scans' groups of
    batches has a row from each)."""
    cells = _cold_scan(
        db, objects, leaves, window, run, pool, scratch,
        "SELECT customer_id, model, (ended_at_us - $origin) // $width AS cell, count(*) AS n, "
        "coalesce(sum(gpu_seconds), 0) AS g FROM {batches} WHERE {in_window} GROUP BY ALL",
        _CELLS_SCHEMA, {"origin": grid.origin, "width": grid.width}, unreadable,
    )  # fmt: skip
    # Summed by DuckDB, not Arrow's group_by: that would start Arrow's pool (see _READ_THREADS).
    db.register("cells_read", cells)
    rows = db.execute(
        "SELECT customer_id, model, sum(n), sum(g) FROM cells_read GROUP BY ALL"
    ).fetchall()
    db.unregister("cells_read")
    totals = {(str(c), str(m)): (int(n), float(g)) for c, m, n, g in rows}
    return totals, cells


def _differing_cells(
    db: duckdb.DuckDBPyConnection,
    cells: pa.Table,
    hot: pa.Table,
    grid: _Grid,
    leaves: list[BatchLeaf],
    unreadable: set[int],
) -> list[BatchLeaf]:
    """Table ``differing_cells``: the cells of the differing keys whose count or GPU-seconds
    differ between ``cells`` (the cold side's) and ``hot`` (the events of those keys); table
    ``hot`` becomes those events in these cells only, the ones the drill-down compares. Returns
    the leaves of the readable batches that may hold a row of such a cell: the only ones read
    again (a batch unreadable in the totals' pass is not retried; its records show up as
    missing from the cold side)."""
    db.register("cold_cells", cells)
    db.register("hot_events", hot)
    grid_params = {"origin": grid.origin, "width": grid.width}
    db.execute(
        "CREATE TEMP TABLE hot_all AS SELECT *, (ended_at_us - $origin) // $width AS cell "
        "FROM hot_events",
        grid_params,
    )
    db.execute(
        "CREATE TEMP TABLE differing_cells AS "
        "WITH c AS (SELECT customer_id, model, cell, sum(n) AS n, sum(g) AS g FROM cold_cells "
        "  SEMI JOIN differing USING (customer_id, model) GROUP BY ALL), "
        "h AS (SELECT customer_id, model, cell, count(*) AS n, coalesce(sum(gpu_seconds), 0) AS g "
        "  FROM hot_all GROUP BY ALL) "
        "SELECT customer_id, model, cell FROM c FULL JOIN h USING (customer_id, model, cell) "
        "WHERE coalesce(c.n, 0) <> coalesce(h.n, 0) OR abs(coalesce(h.g, 0) - coalesce(c.g, 0)) "
        "  > 1e-9 * greatest(1, abs(coalesce(c.g, 0)))"
    )
    # Every hot copy of an event of those cells is compared, wherever its time put it (a copy
    # counted twice with another time, in a cell that balances): its cell is drilled too, and
    # so on until no cell is added (once or twice; the cells of a key are few).
    while db.execute(
        "INSERT INTO differing_cells SELECT DISTINCT customer_id, model, cell FROM hot_all "
        "WHERE event_id IN (SELECT event_id FROM hot_all "
        "  SEMI JOIN differing_cells USING (customer_id, model, cell)) "
        "EXCEPT SELECT customer_id, model, cell FROM differing_cells"
    ).fetchone() not in (None, (0,)):
        pass
    db.execute(
        "CREATE TEMP TABLE hot AS SELECT * FROM hot_all "
        "SEMI JOIN differing_cells USING (customer_id, model, cell)"
    )
    wanted = sorted(int(c) for (c,) in db.execute(
        "SELECT DISTINCT cell FROM differing_cells").fetchall())  # fmt: skip
    drilled = []
    for leaf in leaves:
        if leaf.index in unreadable:
            continue
        span = grid.cells_of(leaf)
        at = bisect.bisect_left(wanted, span.start)
        if at < len(wanted) and wanted[at] < span.stop:
            drilled.append(leaf)
    return drilled


def _cold_k(
    db: duckdb.DuckDBPyConnection,
    objects: ObjectStore,
    leaves: list[BatchLeaf],
    grid: _Grid,
    window: TimeRange,
    pool: ThreadPoolExecutor,
    has_request_ids: bool,
    run: Reconciliation | None = None,
) -> None:
    """Table ``cold_k``: the cold events of the differing cells (exact: the batches read held
    every row of those cells, and ``_of_keys`` or the scan's join let through every row of their
    keys), with ``request_id`` for every row that ``_name_requests`` names from the cold side
    (missing in ClickHouse, or GPU-seconds apart); NULL for the others, whose request ids are
    never read."""
    db.execute(
        "CREATE TEMP TABLE cold_k0 AS SELECT e.* FROM cold_events e SEMI JOIN differing_cells d "
        "ON e.customer_id = d.customer_id AND e.model = d.model "
        "AND (e.ended_at_us - $origin) // $width = d.cell",
        {"origin": grid.origin, "width": grid.width},
    )
    if has_request_ids:  # read with every column (a repair)
        db.execute("CREATE TEMP TABLE cold_k AS SELECT * FROM cold_k0")
        return
    named = db.sql(
        "SELECT event_id, batch FROM cold_k0 ANTI JOIN hot USING (event_id) "
        "UNION SELECT c.event_id, c.batch FROM cold_k0 c JOIN hot h USING (event_id) "
        "WHERE abs(h.gpu_seconds - c.gpu_seconds) > 1e-9"
    ).to_arrow_table()
    wanted = named.column("event_id").combine_chunks()
    holding = {int(b) for b in pc.unique(named.column("batch")).to_pylist()}
    ids = _cold_events(
        objects, window, ["event_id", "request_id"], run, pool=pool,
        leaves=[leaf for leaf in leaves if leaf.index in holding],
        keep=lambda table: pc.is_in(table.column("event_id"), value_set=wanted),
    )  # fmt: skip
    db.register("cold_ids", ids)
    db.execute(
        "CREATE TEMP TABLE cold_k AS SELECT k.*, i.request_id FROM cold_k0 k "
        "LEFT JOIN (SELECT DISTINCT event_id, request_id FROM cold_ids) i USING (event_id)"
    )


def _of_keys(keys: list[tuple[str, str]]) -> Callable[[pa.Table], pa.Array]:
    """A row filter that keeps every row of ``keys`` (and the rows whose customer is one of
    theirs and whose model is another of theirs: the SEMI JOIN after it is exact)."""
    customers = pa.array(sorted({c for c, _ in keys}), pa.string())
    models = pa.array(sorted({m for _, m in keys}), pa.string())

    def keep(table: pa.Table) -> pa.Array:
        return pc.and_(
            pc.is_in(table.column("customer_id"), value_set=customers),
            pc.is_in(table.column("model"), value_set=models),
        )

    return keep


_LISTS = ("missing_in_hot", "missing_in_cold", "duplicated_in_hot", "gpu_mismatches")


def _failed(run: Reconciliation, message: str) -> Reconciliation:
    run.status, run.error = "error", message
    return run


def _cold_events(
    objects: ObjectStore,
    window: TimeRange,
    columns: list[str] | None,
    run: Reconciliation | None,
    *,
    pool: ThreadPoolExecutor | None = None,
    dictionary: bool = False,
    keep: Callable[[pa.Table], pa.Array] | None = None,
    batch_column: bool = False,
    leaves: list[BatchLeaf] | None = None,
) -> pa.Table:
    """Every attestation in the window (``columns`` of it; None: all) from the batches of
    ``leaves`` (None: every batch whose time window overlaps it), each batch re-hashed on read
    (the bytes hashed are the bytes parsed) and only those across the window's edges filtered by
    time. A batch that is gone or
    altered is named in ``run``, and its records then show up as missing from the cold path.
    ``dictionary``: the low-cardinality columns as Arrow dictionaries; ``keep``: a filter
    applied to each batch as it is read (only its rows are kept in memory); ``batch_column``:
    a column ``batch`` with each row's leaf index."""
    bounds = window.parameters()
    start_us, end_us = bounds["start_us"], bounds["end_us"]
    cas = ContentStore(objects)
    wanted = list(SCHEMA.names) if columns is None else columns
    if leaves is None:
        leaves = _window_leaves(objects, window)

    def read(leaf: BatchLeaf) -> pa.Table | ObjectMissing | IntegrityError:
        try:
            data = cas.get(leaf.batch_blake3)
        except (ObjectMissing, IntegrityError) as exc:
            return exc
        edge = leaf.window_start_us < start_us or leaf.window_end_us >= end_us
        names = [*wanted, "ended_at_us"] if edge and "ended_at_us" not in wanted else wanted
        table = pq.read_table(
            pa.BufferReader(data),
            columns=names,
            read_dictionary=[c for c in _DICTIONARY_COLUMNS if c in names] if dictionary else None,
            **SERIAL_READ,
        )
        if edge:
            stamps = table.column("ended_at_us")
            inside = pc.and_(pc.greater_equal(stamps, start_us), pc.less(stamps, end_us))
            table = table.filter(inside).select(wanted)
        if keep is not None:
            table = table.filter(keep(table))
        if batch_column:
            table = table.append_column(
                "batch", pa.repeat(pa.scalar(leaf.index, pa.int64()), table.num_rows)
            )
        return table

    if pool is None:
        with ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="reconcile") as own:
            results = list(own.map(read, leaves))
    else:
        results = list(pool.map(read, leaves))
    tables = []
    for leaf, result in zip(leaves, results, strict=True):
        if isinstance(result, pa.Table):
            tables.append(result)
        elif run is not None:
            run.unreadable_batches.append(
                f"leaf {leaf.index} (batch {leaf.batch_blake3}): {result}"
            )
            run.status = "discrepancies"
    if not tables:
        schema = _schema(wanted, dictionary)
        if batch_column:
            schema = schema.append(pa.field("batch", pa.int64()))
        return schema.empty_table()
    return pa.concat_tables(tables)


def _schema(columns: list[str], dictionary: bool) -> pa.Schema:
    fields = []
    for name in columns:
        field = SCHEMA.field(name)
        if dictionary and name in _DICTIONARY_COLUMNS:
            field = field.with_type(pa.dictionary(pa.int32(), field.type))
        fields.append(field)
    return pa.schema(fields)


_HOT_KEYS_SQL = """
SELECT customer_id, model_name, count(), sum(gpu_seconds) FROM inference_events
WHERE timestamp >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
  AND timestamp < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')
GROUP BY customer_id, model_name
"""

_HOT_EVENTS_SQL = """
SELECT toString(event_id) AS event_id, request_id, CAST(customer_id AS String) AS customer_id,
    CAST(model_name AS String) AS model, gpu_seconds, toUnixTimestamp64Micro(timestamp)
FROM inference_events
WHERE timestamp >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
  AND timestamp < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')
  AND (CAST(customer_id AS String), CAST(model_name AS String))
      IN {keys:Array(Tuple(String, String))}
"""


def _hot_keys(usage: UsageStore, window: TimeRange) -> dict[tuple[str, str], tuple[int, float]]:
    rows = usage.rows(_HOT_KEYS_SQL, window.parameters())
    return {(str(c), str(m)): (int(n), float(g)) for c, m, n, g in rows}


def _hot_events(usage: UsageStore, window: TimeRange, keys: list[tuple[str, str]]) -> pa.Table:
    table = usage.arrow(_HOT_EVENTS_SQL, {**window.parameters(), "keys": keys})
    names = ("event_id", "request_id", "customer_id", "model", "gpu_seconds", "ended_at_us")
    types = (pa.string(),) * 4 + (pa.float64(), pa.int64())
    return pa.table(
        {n: table.column(i).cast(t) for i, (n, t) in enumerate(zip(names, types, strict=True))}
    )


def _compare_keys(
    run: Reconciliation,
    hot: dict[tuple[str, str], tuple[int, float]],
    cold: dict[tuple[str, str], tuple[int, float]],
) -> None:
    run.hot_requests = sum(n for n, _ in hot.values())
    run.cold_requests = sum(n for n, _ in cold.values())
    run.hot_gpu_seconds = sum(g for _, g in hot.values())
    run.cold_gpu_seconds = sum(g for _, g in cold.values())
    for key in sorted(hot.keys() | cold.keys()):
        (hn, hg), (cn, cg) = hot.get(key, (0, 0.0)), cold.get(key, (0, 0.0))
        if hn != cn or abs(hg - cg) > 1e-9 * max(1.0, abs(cg)):
            delta = KeyDelta(key[0], key[1], hn, cn, hg, cg)
            run.keys.append(delta)
            if max(delta.relative()) > run.threshold:
                run.status = "discrepancies"


def _name_requests(run: Reconciliation, db: duckdb.DuckDBPyConnection, cap: int) -> None:
    queries = {
        "missing_in_hot": "SELECT request_id FROM cold_k ANTI JOIN hot USING (event_id) ORDER BY 1",
        "missing_in_cold": "SELECT DISTINCT request_id FROM hot ANTI JOIN cold_k USING (event_id) "
        "ORDER BY 1",
        "duplicated_in_hot": "SELECT any_value(request_id) FROM hot GROUP BY event_id "
        "HAVING count(*) > 1 ORDER BY 1",
    }
    for name, sql in queries.items():
        ids = [str(r[0]) for r in db.execute(sql).fetchall()]
        run.counts[name] = len(ids)
        getattr(run, name).extend(ids[:cap])
    mismatches = db.execute(
        "SELECT c.request_id, any_value(h.gpu_seconds), any_value(c.gpu_seconds) "
        "FROM cold_k c JOIN hot h USING (event_id) WHERE c.request_id IS NOT NULL "
        "GROUP BY c.request_id HAVING abs(any_value(h.gpu_seconds) - any_value(c.gpu_seconds)) "
        "> 1e-9 ORDER BY 1"
    ).fetchall()
    run.counts["gpu_mismatches"] = len(mismatches)
    run.gpu_mismatches.extend((str(r), float(h), float(c)) for r, h, c in mismatches[:cap])


def _repair(usage: UsageStore, db: duckdb.DuckDBPyConnection) -> int:
    """Insert into ClickHouse the attestations it lacks (the cold path is authoritative)."""
    missing = db.execute("SELECT * FROM cold_k ANTI JOIN hot USING (event_id)")
    columns = [d[0] for d in missing.description or ()]
    records = [_usage_record(dict(zip(columns, row, strict=True))) for row in missing.fetchall()]
    if not records:
        return 0
    table = records_to_table(records)
    usage.insert(table, dedup_token="repair:" + ",".join(sorted(r["event_id"] for r in records)))
    return int(table.num_rows)


def _usage_record(row: dict[str, Any]) -> dict[str, Any]:
    """An attestation as the hot path's record (fields the cold path does not keep: defaults)."""
    _modality, family, _model = str(row["model"]).split("/", 2)
    return {
        **{k: row[k] for k in ("event_id", "request_id", "customer_id", "plan", "tier", "job_id",
                               "backend", "device_uuid", "device_kind", "status", "error_code",
                               "queue_time_us", "inference_time_us", "gpu_seconds", "metered",
                               "billable", "unit_price", "currency", "cost_nanos")},
        "timestamp": row["ended_at_us"] / 1_000_000,
        "model_name": row["model"],
        "family": family,
        "total_time_us": row["queue_time_us"] + row["inference_time_us"],
    }  # fmt: skip

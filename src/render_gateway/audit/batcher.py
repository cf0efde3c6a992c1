"""The cold-path batcher: usage records from the durable usage stream into attestation batches.

A thread reads the usage stream as consumer group ``audit`` and seals a batch when
``batch_records`` are waiting or the oldest waiting record is ``batch_seconds`` old, acking the
batch's records once its leaf is in the audit log. Exactly once: a batch holds a contiguous run
of the stream's records and its leaf names that run, so the group's position is the later of
its ack and the log's last leaf (the batcher acks up to the leaf when the ack is behind) — a
crash between the leaf and the ack never batches a record twice, and the records themselves
are durable before any request is answered, so none is lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from render_gateway.audit.attestations import attestations_table
from render_gateway.audit.leaves import BatchLeaf
from render_gateway.audit.log import AuditLog
from render_gateway.stores.usage_log import COLD_PATH_GROUP, UsageStream

log = logging.getLogger(__name__)

GROUP = COLD_PATH_GROUP  # its consumer group in the usage stream
CONSUMER = GROUP  # the name tests and older callers import


@dataclass
class BatcherStats:
    batches: int = 0
    attested: int = 0
    log_size: int = 0
    acked: int = 0  # the group's position: every record up to it is in the audit log
    backlog: int = 0
    errors: int = 0
    last_error: str | None = None


# With a backlog of this many batches or more (a restart's catch-up, a burst), they are read
# at once and the next batch's table is built on a second thread while the last one is
# appended: the build is mostly Python, the append mostly Arrow, hashing and fsyncs without
# the GIL (docs/BENCHMARKS.md, issue 16). Two keep a read at twice a batch (a Redis read is one
# script: one call of 2 × 10,000 records by default).
READ_AHEAD_BATCHES = 2

Run = tuple[list[int], list[bytes], list[str | None]]


def _tables(runs: list[Run]) -> Generator[pa.Table, None, None]:
    """Each run's attestation table, in order: column-wise, from the stored JSON (no Python
    dict per record). With several runs, each is built on a thread of its own while the
    caller appends the one before."""
    if len(runs) == 1:
        yield attestations_table(*runs[0])
        return
    with ThreadPoolExecutor(1, thread_name_prefix="audit-build") as builder:
        upcoming = builder.submit(attestations_table, *runs[0])
        for later in runs[1:]:
            current = upcoming.result()
            upcoming = builder.submit(attestations_table, *later)
            yield current
        yield upcoming.result()


class AttestationBatcher:
    def __init__(
        self,
        usage_stream: UsageStream,
        open_log: Callable[[], AuditLog],
        batch_records: int = 10_000,
        batch_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_open: Callable[[AuditLog], None] = lambda _log: None,
        on_append: Callable[[AuditLog, BatchLeaf, pa.Table], None] = (
            lambda _log, _leaf, _batch: None
        ),
    ) -> None:
        """``on_open`` runs once the log is open, ``on_append`` after each batch is in it (both
        on the batcher's thread; e.g. the proof index catching up and growing). A failing
        ``on_append`` is logged and never stops sealing: what it maintains is derived data."""
        self._stream, self._open_log = usage_stream, open_log
        self._on_open, self._on_append = on_open, on_append
        self._batch_records, self._batch_seconds, self._clock = batch_records, batch_seconds, clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._seal_now = False
        # Appends since the thread last looked, and how many would fill a batch: notify wakes
        # the thread only then (or it wakes when the oldest record falls due), so a request
        # costs the batcher nothing until there is a batch to seal.
        self._appended = 0
        self._wake_after = 1
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        self.audit_log: AuditLog | None = None
        self.stats = BatcherStats()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-batcher", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """A record was appended (cheap; safe on the event loop). An increment lost to a race
        with the thread's reset only delays a full batch to its time-based wake."""
        self._appended += 1
        if self._appended >= self._wake_after:
            self._wake.set()

    def seal(self, timeout: float) -> bool:
        """Batch everything in the usage stream now, however few; True once it is in the log."""
        target = self._stream.head()
        deadline = time.monotonic() + timeout
        self._seal_now = True
        self._wake.set()
        with self._progress:
            while self.stats.acked < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(min(remaining, 0.1))
                self._seal_now = True
                self._wake.set()
        return True

    def stop(self, seal_seconds: float = 5.0) -> None:
        if self._thread is None:
            return
        if seal_seconds > 0:  # the thread opens the log first if it has not yet
            try:
                self.seal(seal_seconds)
            except Exception:  # the stream is unreachable (Redis down): stop all the same
                # A thread left running would be a second batcher (a forked log) once the
                # lease is won again.
                log.warning("attestation batcher: sealing before the stop failed", exc_info=True)
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        backoff = 0.0
        due_in = 0.0  # the first pass looks at once
        try:
            while not self._stopping.is_set():
                if backoff:
                    self._stopping.wait(backoff)
                elif due_in > 0:
                    # At least once a second: a record appended by another replica (a shared
                    # stream) notifies no one here.
                    self._wake.wait(min(1.0, due_in))
                self._wake.clear()
                if self._stopping.is_set():
                    return
                try:
                    if self.audit_log is None:
                        opened = self._open_log()
                        try:
                            self._on_open(opened)
                        except Exception:  # derived data (the proof index): seal regardless
                            log.exception("after opening the audit log")
                        self.audit_log = opened
                        self.stats.log_size = opened.size
                    due_in = self._batch_what_is_due(self.audit_log)
                    backoff = 0.0
                except Exception as exc:  # the store or the log: retry; records stay on disk
                    self.stats.errors += 1
                    self.stats.last_error = str(exc)
                    backoff = min(30.0, max(0.5, backoff * 2))
                    log.exception("attestation batching failed (retrying in %.1f s)", backoff)
        finally:
            close = getattr(self._stream, "close_thread_connection", None)
            if close is not None:
                close()

    def _batch_what_is_due(self, audit_log: AuditLog) -> float:
        """Seal every batch that is due; the seconds until the next one falls due by age."""
        if audit_log.last_usage_seq > self._stream.acked(GROUP):
            # The log is ahead of the ack (a crash between a leaf and its ack): what the log
            # holds is done, so the group's position is moved up to it before any read.
            self._stream.ack(GROUP, audit_log.last_usage_seq)
        while True:
            seal_now, self._seal_now = self._seal_now, False
            self._appended = 0
            # The count and the oldest record's time, without reading the records: nothing
            # is decoded until a batch is due.
            waiting, oldest = self._stream.lag(GROUP)
            self._observe(waiting)
            if not waiting or oldest is None:
                self._wake_after = self._batch_records
                return self._batch_seconds
            age = self._clock() - oldest
            if not (waiting >= self._batch_records or seal_now or age >= self._batch_seconds):
                self._wake_after = self._batch_records - waiting
                return self._batch_seconds - age
            size = self._batch_records
            ahead = READ_AHEAD_BATCHES if waiting >= READ_AHEAD_BATCHES * size else 1
            seqs, records, claims = self._stream.read_group_raw(GROUP, ahead * size)
            if not seqs:  # counted but not readable yet (another writer's append): soon
                return min(1.0, self._batch_seconds)
            runs = [
                (seqs[at : at + size], records[at : at + size], claims[at : at + size])
                for at in range(0, len(seqs), size)
            ]
            full = len(runs[-1][0]) == size
            with contextlib.closing(_tables(runs)) as tables:
                for batch in tables:  # in the stream's order, each acked once in the log
                    self._seal(audit_log, batch)
            if not full:
                return self._batch_seconds if not self._seal_now else 0.0

    def _seal(self, audit_log: AuditLog, batch: pa.Table) -> None:
        """Append one batch to the log, then ack its records (the leaf first: see above)."""
        leaf = audit_log.append(batch)
        try:
            self._on_append(audit_log, leaf, batch)
        except Exception:
            log.exception("after sealing leaf %d (the batch is in the log)", leaf.index)
        self._stream.ack(GROUP, leaf.last_usage_seq)
        self.stats.batches += 1
        self.stats.attested += leaf.count
        self.stats.log_size = audit_log.size
        self._observe()

    def _observe(self, backlog: int | None = None) -> None:
        """Publish the group's position and backlog (``backlog``: just read by the caller)."""
        self.stats.acked = self._stream.acked(GROUP)
        self.stats.backlog = self._stream.lag(GROUP)[0] if backlog is None else backlog
        with self._progress:
            self._progress.notify_all()

"""The hot-path writer: usage records from the durable usage stream into ClickHouse.

One thread reads the stream as consumer group ``clickhouse`` and inserts columnar (Arrow)
batches of up to ``batch_rows`` records, every ``flush_interval`` seconds or as soon as a full
batch is waiting, acking each batch once it is in the store. Requests never wait for it: the
metering hook only appends to the stream (in the job's own commit) and calls ``notify``, which
counts and, at most, sets an event.

When the store is down or slow, records stay in the stream (append-only, in order) unacked; the
writer retries with backoff and reads them again when the store is back. Exactly once: every
batch carries an insert deduplication token derived from its event ids, and the first batch
after a failure or a restart (which may already have been inserted before its ack) is first
filtered against the event ids the store already has.

The writer's store is its own client: the read side (metering/read_side.py) has another, so
no query waits in front of an insert.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import blake3
import pyarrow as pa
import pyarrow.compute as pc

from render_gateway.metering.columns import records_json_to_table, records_to_table
from render_gateway.metering.store import UsageStore, UsageStoreError
from render_gateway.stores.usage_log import HOT_PATH_GROUP, UsageStream

log = logging.getLogger(__name__)

GROUP = HOT_PATH_GROUP  # its consumer group in the usage stream


@dataclass
class WriterStats:
    written: int = 0  # records inserted (after de-duplication)
    batches: int = 0
    already_present: int = 0  # replayed records the store had already (not inserted again)
    dropped: int = 0  # records that could not be converted at all (logged by event id)
    store_errors: int = 0
    last_error: str | None = None
    in_flight: int = 0  # records in the batch being inserted now
    backlog: int = 0  # records in the stream not yet in the store (not acked)
    lag_seconds: float = 0.0  # age of the oldest record not yet in the store
    acked: int = 0  # the group's position: every record up to it is in the store


class UsageWriter:
    def __init__(
        self,
        usage_stream: UsageStream,
        open_store: Callable[[], UsageStore],
        batch_rows: int = 20_000,
        flush_interval: float = 1.0,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stream, self._open_store = usage_stream, open_store
        self._batch_rows, self._flush_interval = batch_rows, flush_interval
        self._max_backoff, self._clock = max_backoff, clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._caught_up = threading.Condition()
        self._pending = 0  # notified since the last read (a hint; the stream is the truth)
        self._thread: threading.Thread | None = None
        self.store: UsageStore | None = None
        self.stats = WriterStats()

    # ------------------------------------------------------------------ any thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self._thread.start()

    def notify(self, records: int = 1) -> None:
        """A record was appended to the stream. Cheap and non-blocking: safe on the event loop."""
        self._pending += records
        if self._pending >= self._batch_rows:
            self._wake.set()

    def flush(self) -> None:
        """Ask for a flush now (without waiting for it)."""
        self._wake.set()

    def wait_caught_up(self, timeout: float) -> bool:
        """Block until every record in the stream at call time is in the store (tests,
        shutdown)."""
        target = self._stream.head()
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._caught_up:
            while self.stats.acked < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._caught_up.wait(min(remaining, 0.1))
                self._wake.set()
        return True

    def refresh_stats(self) -> WriterStats:
        """The stats with backlog and lag read now (a few indexed reads of the stream)."""
        self._observe()
        return self.stats

    def stop(self, drain_seconds: float = 5.0) -> None:
        """Deliver what is waiting (up to ``drain_seconds``), then stop. Whatever is left stays
        in the stream, unacked, and is delivered after the next start."""
        if self._thread is None:
            return
        if self.store is not None and drain_seconds > 0:
            try:
                self.wait_caught_up(drain_seconds)
            except Exception:  # the stream is unreachable (Redis down): stop all the same
                # A thread left running would be a second writer once the lease is won again.
                log.warning("usage writer: draining before the stop failed", exc_info=True)
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self._thread = None
        if self.store is not None:
            self.store.close()
            self.store = None

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # the thread must say why it died; the records stay in the stream
            log.exception("usage writer stopped unexpectedly")
            self.stats.last_error = "writer thread died; see the log"
        finally:
            close = getattr(self._stream, "close_thread_connection", None)
            if close is not None:
                close()

    def _loop(self) -> None:
        suspect = True  # the first batch after a start may be in the store already
        backoff = 0.0
        while not self._stopping.is_set():
            if backoff:
                self._stopping.wait(backoff)
                if self._stopping.is_set():
                    return
            else:
                self._wake.wait(self._flush_interval)
            self._wake.clear()
            try:
                if self.store is None:
                    self.store = self._open_store()
                    log.info("usage store open: %s", self.store.url)
                self._drain(self.store, suspect)
                suspect, backoff = False, 0.0
            except Exception as exc:  # the store, or the ack: read the unacked records again
                suspect = True
                self.stats.store_errors += 1
                self.stats.last_error = str(exc)
                backoff = min(self._max_backoff, max(0.5, backoff * 2))
                if isinstance(exc, UsageStoreError):
                    log.warning("usage store unavailable (retrying in %.1f s): %s", backoff, exc)
                else:
                    log.exception("usage writer failed (retrying in %.1f s)", backoff)
            finally:
                self.stats.in_flight = 0
                self._observe()

    def _drain(self, store: UsageStore, suspect: bool) -> None:
        """Insert and ack everything the group has not acked."""
        while True:
            self._pending = 0
            seqs, blobs = self._stream.read_group_json(GROUP, self._batch_rows)
            if not seqs:
                return
            self.stats.in_flight = len(seqs)
            if not suspect:
                suspect = not self._insert_json(store, blobs)
            if suspect:  # after a start or a failure, or a batch the store could not parse
                table = self._table(seqs, blobs)
                if table.num_rows:
                    table = self._without_present(store, table)
                if table.num_rows:
                    store.insert(table, dedup_token=_token(table))
                    self.stats.written += table.num_rows
                    self.stats.batches += 1
            self._stream.ack(GROUP, seqs[-1])
            self._observe()
            suspect = False
            if len(seqs) < self._batch_rows:
                return

    def _insert_json(self, store: UsageStore, blobs: Sequence[bytes]) -> bool:
        """The normal path: the stored JSON as it is, parsed by the store. False when the store
        refused it; the batch then goes the careful way (converted here, one bad record
        skipped, checked against the event ids already stored: a refusal may also be an outage,
        or a reply lost after the insert landed)."""
        data = b"\n".join(blobs)
        try:
            store.insert_json(data, dedup_token=blake3.blake3(data).hexdigest())
        except UsageStoreError as exc:
            log.warning("usage store refused a batch of %d records as JSON: %s", len(blobs), exc)
            return False
        self.stats.written += len(blobs)
        self.stats.batches += 1
        return True

    def _table(self, seqs: Sequence[int], blobs: Sequence[bytes]) -> pa.Table:
        try:
            return records_json_to_table(blobs)
        except (pa.ArrowException, KeyError, TypeError, ValueError):
            # One malformed record must not stop the others forever: convert one by one.
            good = []
            for row in self._stream.read_group(GROUP, len(seqs)):  # the same, unacked
                try:
                    records_to_table([row.record])
                except (pa.ArrowException, KeyError, TypeError, ValueError) as exc:
                    self.stats.dropped += 1
                    log.error("usage record seq %d cannot be stored, skipped: %r", row.seq, exc)
                else:
                    good.append(row.record)
            return records_to_table(good)

    def _without_present(self, store: UsageStore, table: pa.Table) -> pa.Table:
        stamps = pc.min_max(table.column("timestamp"))
        since = stamps["min"].value / 1_000_000
        until = stamps["max"].value / 1_000_000
        ids = table.column("event_id").to_pylist()
        present = store.existing_event_ids(ids, since, until)
        if not present:
            return table
        self.stats.already_present += len(present)
        keep = pa.array([event_id not in present for event_id in ids])
        return table.filter(keep)

    def _observe(self) -> None:
        try:
            self.stats.acked = self._stream.acked(GROUP)
            self.stats.backlog, oldest = self._stream.lag(GROUP)
            self.stats.lag_seconds = max(0.0, self._clock() - oldest) if oldest else 0.0
        except Exception as exc:  # the stream is unreachable too (Redis down): it runs after
            # every pass, failed ones included, so it must not end the thread; the next pass
            # observes again.
            self.stats.last_error = str(exc)
        with self._caught_up:
            self._caught_up.notify_all()


def _token(table: pa.Table) -> str:
    digest = blake3.blake3()
    for event_id in table.column("event_id").to_pylist():
        digest.update(event_id.encode())
    return digest.hexdigest()

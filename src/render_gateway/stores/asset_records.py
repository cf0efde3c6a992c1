"""Where an asset's record (owner, content type, size, BLAKE3, creation time) is kept, by id.

Two implementations behind :class:`AssetRecords`, chosen with the asset store's URL:

* :class:`ObjectAssetRecords` (``s3://``): one JSON object per record, ``records/XY/<id>.json``,
  written create-only: a bucket has no transactions, and each request pays one PUT anyway.
* :class:`SqliteAssetRecords` (``file://``): a ``records.sqlite`` file in the directory, written
  through a group-commit thread. A record file per request cost two files' worth of syscalls
  and two ``fsync``s on the sync request path (the biggest share of its CPU after the event
  loop: docs/BENCHMARKS.md, issue 16); here concurrent requests share one commit and one
  ``fsync``, and a record is acknowledged only once it is on disk (``synchronous = FULL``).
  Records the JSON layout holds (written by earlier versions) are still read: ``find`` falls
  back to them, and an id taken there is taken here too.

Every write is create-only: ``add`` answers False for an id that already has a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol

import orjson

from render_gateway.stores.objects import ObjectExists, ObjectMissing, ObjectStore
from render_gateway.stores.sqlite_group_commit import GroupCommitWriter

RECORDS_FILE = "records.sqlite"


class UnreadableRecord(ValueError):
    """The stored record is not a JSON object."""


def record_key(asset_id: str) -> str:
    return f"records/{asset_id[2:4]}/{asset_id}.json"


class AssetRecords(Protocol):
    async def add(self, asset_id: str, record: dict[str, Any]) -> bool:
        """Store ``record`` under ``asset_id``, durably; False when the id already has one."""
        ...

    def find(self, asset_id: str) -> dict[str, Any] | None:
        """The record (blocking: called on the asset store's threads); None when there is
        none; :class:`UnreadableRecord` when what is stored is not a JSON object."""
        ...

    async def close(self) -> None: ...


class ObjectAssetRecords:
    """One create-only JSON object per record in ``objects``."""

    def __init__(self, objects: ObjectStore) -> None:
        self._objects = objects

    async def add(self, asset_id: str, record: dict[str, Any]) -> bool:
        return await asyncio.to_thread(self._add, asset_id, orjson.dumps(record))

    def _add(self, asset_id: str, data: bytes) -> bool:
        try:
            # False: an identical record was already there, i.e. not written by this call.
            return self._objects.put_new(record_key(asset_id), data)
        except ObjectExists:
            return False

    def exists(self, asset_id: str) -> bool:
        return self._objects.exists(record_key(asset_id))

    def find(self, asset_id: str) -> dict[str, Any] | None:
        try:
            raw = self._objects.get(record_key(asset_id))
        except ObjectMissing:
            return None
        return decoded_record(raw)

    async def close(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS asset_records (
    id TEXT PRIMARY KEY,
    record BLOB NOT NULL
) WITHOUT ROWID;
"""


def _migrate(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)


class SqliteAssetRecords:
    """Records in ``<directory>/records.sqlite``; ``legacy`` holds the JSON records earlier
    versions wrote into the same directory (read, and their ids kept taken; never written)."""

    def __init__(self, directory: Path, legacy: ObjectAssetRecords) -> None:
        self._path = directory / RECORDS_FILE
        self._legacy = legacy
        self._start = threading.Lock()
        self._writer: GroupCommitWriter | None = None  # started by the first write
        self._readers = threading.local()  # one read connection per asset-store thread
        self._opened: list[sqlite3.Connection] = []

    async def add(self, asset_id: str, record: dict[str, Any]) -> bool:
        writer = self._running_writer()
        if not writer.ready.done():
            await asyncio.wrap_future(writer.ready)
        writer.ready.result()  # raises what opening the file raised
        data = orjson.dumps(record)

        def insert(conn: sqlite3.Connection) -> bool:
            if self._legacy.exists(asset_id):  # taken in the JSON layout of earlier versions
                return False
            cursor = conn.execute(
                "INSERT INTO asset_records (id, record) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (asset_id, data),
            )
            return cursor.rowcount == 1

        added: bool = await writer.execute(insert)
        return added

    @property
    def commits(self) -> int:
        """Transactions committed by this process's writer (each covers every waiting add)."""
        return 0 if self._writer is None else self._writer.commits

    def _running_writer(self) -> GroupCommitWriter:
        with self._start:
            if self._writer is None:
                self._writer = GroupCommitWriter(
                    self._path, "FULL", 512, "asset-records-writer", _migrate
                )
                self._writer.start()
            return self._writer

    def find(self, asset_id: str) -> dict[str, Any] | None:
        conn = self._reader()
        row = None
        if conn is not None:
            try:
                row = conn.execute(
                    "SELECT record FROM asset_records WHERE id = ?", (asset_id,)
                ).fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):  # the writer has not made it yet
                    raise
        if row is not None:
            return decoded_record(bytes(row[0]))
        return self._legacy.find(asset_id)

    def _reader(self) -> sqlite3.Connection | None:
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            if not self._path.exists():  # nothing written yet: never create the file here
                return None
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
            self._readers.conn = conn
            with self._start:
                self._opened.append(conn)
        return conn

    async def close(self) -> None:
        with self._start:
            writer, self._writer = self._writer, None
            opened, self._opened = self._opened, []
        if writer is not None:
            await asyncio.to_thread(writer.stop)
        for conn in opened:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


def export_json_records(directory: Path) -> tuple[int, int]:
    """Write every record of ``directory``'s records file as the ``records/XY/<id>.json``
    object the ``s3://`` store reads, create-only (an object already there is kept): what
    copying a ``file://`` asset directory to a bucket needs. Returns (written, already there)."""
    from render_gateway.stores.local_objects import LocalDirectoryObjects

    path = directory / RECORDS_FILE
    if not path.is_file():
        return 0, 0
    objects = LocalDirectoryObjects(directory)
    written = kept = 0
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for asset_id, record in conn.execute("SELECT id, record FROM asset_records ORDER BY id"):
            decoded_record(bytes(record))  # refuse to copy a record no store could read
            try:
                created = objects.put_new(record_key(asset_id), bytes(record))
            except ObjectExists:
                created = False
            written, kept = written + created, kept + (not created)
    return written, kept


def decoded_record(raw: bytes) -> dict[str, Any]:
    """A stored record's fields; :class:`UnreadableRecord` unless it is a JSON object."""
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UnreadableRecord("not JSON") from None
    if not isinstance(meta, dict):
        raise UnreadableRecord("not a JSON object")
    return meta

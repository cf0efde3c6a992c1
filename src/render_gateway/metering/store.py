"""The usage store: ClickHouse over one clickhouse-connect client, embedded (chDB) or remote.

``chdb:///abs/path`` runs ClickHouse inside this process on a directory (one gateway, no
server to run); ``http(s)://user:password@host:port/database`` talks to a ClickHouse server.
Both go through the same client API, so there is one code path for inserts and queries.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from render_gateway.metering.columns import (
    COLUMNS,
    JSON_INSERT_SETTINGS,
    JSON_REQUIRED,
    JSON_SELECT,
    JSON_STRUCTURE,
)
from render_gateway.metering.schema import (
    EVENTS_TABLE,
    apply_migrations,
    check_retention_days,
    ensure_retention,
)

# Event ids per lookup query: keeps the bound parameter well under HTTP URL limits.
_ID_CHUNK = 1_000


class UsageStoreError(RuntimeError):
    """The usage store failed (unreachable, server error, missing table)."""


class UsageStoreLocked(UsageStoreError):
    """The chDB directory is held by another process."""


class UsageStore(Protocol):
    url: str  # without any password

    def migrate(self) -> list[int]: ...

    def insert(self, table: pa.Table, dedup_token: str | None = None) -> None: ...

    def insert_json(self, records: bytes, dedup_token: str) -> None: ...

    def existing_event_ids(
        self, event_ids: Sequence[str], since: float, until: float
    ) -> set[str]: ...

    def rows(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]: ...

    def arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table: ...
    def append(self, table_name: str, table: pa.Table) -> None: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


class ClickHouseUsageStore:
    """A :class:`UsageStore` on one clickhouse-connect client under one lock. The writer and
    the read side each open their own, so a slow query never waits in front of an insert."""

    def __init__(
        self,
        client: Client,
        url: str,
        retention_days: int,
        secret: str | None = None,
        embedded: bool = False,
    ) -> None:
        self.url = url
        self.embedded = embedded  # chDB in this process (else a ClickHouse server over HTTP)
        self.retention_days = retention_days
        self._client = client
        self._secret = secret  # scrubbed from error messages
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def _session(self, action: str) -> Iterator[Client]:
        with self._lock:
            if self._closed:
                raise UsageStoreError(f"usage store {self.url}: {action}: the store is closed")
            try:
                yield self._client
            except (ClickHouseError, OSError) as exc:
                message = str(exc)
                if self._secret:
                    message = message.replace(self._secret, "***")
                raise UsageStoreError(
                    f"usage store {self.url}: {action} failed: {message}"
                ) from exc

    def migrate(self) -> list[int]:
        with self._session("migration") as client:
            applied = apply_migrations(client, self.retention_days)
            ensure_retention(client, self.retention_days)
            return applied

    def insert(self, table: pa.Table, dedup_token: str | None = None) -> None:
        if table.num_rows == 0:
            return
        settings: dict[str, Any] = {"deduplicate_blocks_in_dependent_materialized_views": 1}
        if dedup_token is not None:
            settings["insert_deduplication_token"] = dedup_token
        with self._session(f"insert of {table.num_rows} rows") as client:
            client.insert_arrow(EVENTS_TABLE, table, settings=settings)

    def insert_json(self, records: bytes, dedup_token: str) -> None:
        """Insert usage records given as the usage stream stores them: JSON objects, one a line.
        ClickHouse parses them and derives the table's columns (``columns.JSON_SELECT``); a
        record that lacks a required field, or any it cannot parse, fails the whole insert
        (nothing of it is stored) with :class:`UsageStoreError`."""
        if not records:
            return
        settings: dict[str, str | int] = {
            **JSON_INSERT_SETTINGS,
            "insert_deduplication_token": dedup_token,
            "deduplicate_blocks_in_dependent_materialized_views": 1,
        }
        clause = ", ".join(f"{name} = {_sql_value(value)}" for name, value in settings.items())
        head = f"INSERT INTO {EVENTS_TABLE} ({', '.join(COLUMNS)}) SETTINGS {clause} SELECT"
        structure = _sql_value(JSON_STRUCTURE)
        with self._session("insert of a JSON batch") as client:
            if not self.embedded:
                # A server reads the body as the input() of the statement: one HTTP request.
                client.command(
                    f"{head} {JSON_SELECT} FROM input({structure}) WHERE {JSON_REQUIRED}"
                    " FORMAT JSONEachRow",
                    data=records,
                )
                return
            # chDB takes no request body: the batch goes through a file, as clickhouse-connect
            # does for its own inserts into chDB (INSERT ... FROM INFILE).
            with tempfile.NamedTemporaryFile(prefix="usage-batch-", suffix=".jsonl") as batch:
                batch.write(records)
                batch.flush()
                source = f"file({_sql_value(batch.name)}, 'JSONEachRow', {structure})"
                client.command(f"{head} {JSON_SELECT} FROM {source} WHERE {JSON_REQUIRED}")

    def append(self, table_name: str, table: pa.Table) -> None:
        """Insert an Arrow table into another table of the schema (e.g. reconciliation_runs)."""
        with self._session(f"insert into {table_name}") as client:
            client.insert_arrow(table_name, table)

    def existing_event_ids(self, event_ids: Sequence[str], since: float, until: float) -> set[str]:
        """Which of ``event_ids`` are stored; ``since``/``until`` (epoch seconds, inclusive)
        bound their timestamps so that only those days' partitions are read."""
        found: set[str] = set()
        bounds = {"since": math.floor(since * 1e6), "until": math.ceil(until * 1e6)}
        for start in range(0, len(event_ids), _ID_CHUNK):
            chunk = list(event_ids[start : start + _ID_CHUNK])
            rows = self.rows(
                "SELECT DISTINCT toString(event_id) FROM inference_events"
                " WHERE timestamp >= fromUnixTimestamp64Micro({since:Int64}, 'UTC')"
                " AND timestamp <= fromUnixTimestamp64Micro({until:Int64}, 'UTC')"
                " AND event_id IN {ids:Array(UUID)}",
                {**bounds, "ids": chunk},
            )
            found.update(str(row[0]) for row in rows)
        return found

    def rows(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self._session("query") as client:
            result = client.query(sql, parameters=dict(parameters or {}))
            return [tuple(row) for row in result.result_rows]

    def arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        """The result as an Arrow table (columns named by the query): no Python object per
        value, for results of many rows."""
        with self._session("query") as client:
            table: pa.Table = client.query_arrow(sql, parameters=dict(parameters or {}))
            return table

    def ping(self) -> bool:
        """Whether the store answers now (never raises)."""
        with self._lock:
            if self._closed:
                return False
            try:
                return bool(self._client.ping())
            except (ClickHouseError, OSError):
                return False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._client.close()


def _sql_value(value: str | int) -> str:
    """A ClickHouse literal: an int as it is, a string quoted and escaped."""
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class UsageUrl:
    """A usage store URL, parsed. ``path`` for chDB; the rest for a ClickHouse server."""

    scheme: Literal["chdb", "http", "https"]
    path: Path | None = None
    host: str = ""
    port: int = 0
    username: str = "default"
    password: str | None = None
    database: str = "default"

    @property
    def redacted(self) -> str:
        if self.scheme == "chdb":
            return f"chdb://{quote(str(self.path))}"
        netloc = f"{quote(self.username, safe='')}@{self.host}:{self.port}"
        return urlunsplit((self.scheme, netloc, f"/{quote(self.database)}", "", ""))


def _accepted(setting_name: str, url: str) -> ValueError:
    return ValueError(
        f"{setting_name} = {redact_url(url)!r}: expected chdb:///absolute/directory, "
        "http://user:password@host:8123/database or https://user:password@host:8443/database"
    )


def parse_usage_url(url: str, setting_name: str = "gateway.metering.url") -> UsageUrl:
    """``url`` parsed; ValueError naming ``setting_name`` when it is not a usage store URL."""
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        path = unquote(parts.path)
        if parts.netloc or not path.startswith("/"):
            raise _accepted(setting_name, url)
        return UsageUrl("chdb", path=Path(path))
    if parts.scheme in ("http", "https") and parts.hostname:
        try:
            port = parts.port or (8443 if parts.scheme == "https" else 8123)
        except ValueError as exc:  # a port that is not a number
            raise _accepted(setting_name, url) from exc
        database = unquote(parts.path.strip("/")) or "default"
        if "/" in database:
            raise _accepted(setting_name, url)
        return UsageUrl(
            "https" if parts.scheme == "https" else "http",
            host=parts.hostname,
            port=port,
            username=unquote(parts.username or "") or "default",
            password=unquote(parts.password) if parts.password is not None else None,
            database=database,
        )
    raise _accepted(setting_name, url)


def redact_url(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def default_usage_url(data_dir: Path) -> str:
    return f"chdb://{quote(str(data_dir.resolve() / 'usage.chdb'))}"


def _held_by_another_process(directory: Path) -> bool:
    """ClickHouse holds an exclusive flock on ``status`` while it runs on a directory."""
    try:
        fd = os.open(directory / "status", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _connect_chdb(path: Path, shown: str) -> Client:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageStoreError(f"usage store {shown}: cannot create the directory: {exc}") from exc
    try:
        return clickhouse_connect.get_client(interface="chdb", path=str(path))
    except (ClickHouseError, OSError) as exc:
        if _held_by_another_process(path):
            raise UsageStoreLocked(
                f"usage store {shown} is in use by another process (a running gateway?):"
                " chDB lets one process at a time open a directory; stop it, or point"
                " the gateway at a ClickHouse server"
            ) from exc
        raise UsageStoreError(f"usage store {shown}: cannot open chDB: {exc}") from exc


def _connect_http(parsed: UsageUrl, shown: str) -> Client:
    try:
        return clickhouse_connect.get_client(
            interface=parsed.scheme,
            host=parsed.host,
            port=parsed.port,
            username=parsed.username,
            password=parsed.password or "",
            database=parsed.database,
            secure=parsed.scheme == "https",
            # One client shared under a lock: a server session would only add session locks.
            autogenerate_session_id=False,
            connect_timeout=5,
        )
    except (ClickHouseError, OSError) as exc:
        message = str(exc).replace(parsed.password, "***") if parsed.password else str(exc)
        raise UsageStoreError(f"usage store {shown}: cannot connect: {message}") from exc


def open_usage_store(
    url: str,
    *,
    retention_days: int = 400,
    password: str | None = None,
    setting_name: str = "gateway.metering.url",
    migrate: bool = True,
) -> ClickHouseUsageStore:
    """The store at ``url``, its schema migrated and its retention set to ``retention_days``
    (``migrate=False``: as it is — for a second client, such as the read side's, that must not
    race the writer's migration). ``password`` (from a secret) overrides one in the URL."""
    parsed = parse_usage_url(url, setting_name)
    check_retention_days(retention_days)
    if password is not None:
        parsed = replace(parsed, password=password)
    shown = parsed.redacted
    if parsed.path is not None:
        client = _connect_chdb(parsed.path, shown)
    else:
        client = _connect_http(parsed, shown)
    store = ClickHouseUsageStore(
        client, shown, retention_days, secret=parsed.password, embedded=parsed.path is not None
    )
    if not migrate:
        return store
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store

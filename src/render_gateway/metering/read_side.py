"""The read side of the usage store: ``/usage``, the dashboard, reconciliation, on a client of
their own.

The writer (metering/writer.py) inserts through its own ClickHouse client under its own lock;
this object opens a second client to the same URL, so a slow dashboard query never holds the
lock an insert needs. Against a ClickHouse server that is simply a second HTTP client. chDB
runs ClickHouse inside the process and allows one engine (one directory) per process, but any
number of connection handles to it: a second client on the same path shares the engine and
has its own handle, and a query on one does not block an insert on the other (measured with
chdb 4.4 / clickhouse-connect 1.12: an insert took 36 ms while a 3 s ``sleepEachRow`` query
ran on the other handle; tests/metering/test_read_side.py keeps that true). The directory's
lock against other processes is unchanged.

The read side never migrates the schema (the writer does, and two migrations at once would
race); before the writer's first migration its queries fail as an unavailable store. It opens
on first use, so a store that is down at start is retried on the next request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from render_gateway.auth.private_file import read_private_text
from render_gateway.config import MeteringConfig
from render_gateway.metering.backend_activity import BackendActivity, backend_activity
from render_gateway.metering.capacity_queries import ModelTraffic, model_traffic
from render_gateway.metering.queries import (
    TimeRange,
    errors_by_code,
    latency_quantiles,
    operator_hourly,
    per_minute,
)
from render_gateway.metering.record_lookup import StoredRecord, find_records
from render_gateway.metering.report import usage_report
from render_gateway.metering.series import SeriesPoint, usage_series
from render_gateway.metering.store import (
    UsageStore,
    UsageStoreError,
    default_usage_url,
    open_usage_store,
)

__all__ = ["UsageQueries", "UsageStoreError"]

log = logging.getLogger(__name__)


class UsageQueries:
    """The usage store's queries, on the read side's own client (opened on first use)."""

    def __init__(self, open_store: Callable[[], UsageStore]) -> None:
        self._open_store = open_store
        self._opening = threading.Lock()  # guards opening only: queries take the store's lock
        self._store: UsageStore | None = None
        self._closed = False

    @classmethod
    def for_config(cls, metering: MeteringConfig, data_dir: Path) -> UsageQueries:
        """On the store the writer uses (the same URL and password), without migrating it."""
        url = metering.url or default_usage_url(data_dir)
        password = read_private_text(metering.password_file) if metering.password_file else None
        return cls(lambda: open_usage_store(url, password=password, migrate=False))

    # ------------------------------------------------------------------ blocking

    def store(self) -> UsageStore:
        """The read side's client; UsageStoreError while the store cannot be reached."""
        with self._opening:
            if self._closed:
                raise UsageStoreError("the usage read side is closed")
            if self._store is None:
                self._store = self._open_store()
            return self._store

    def store_or_none(self) -> UsageStore | None:
        """The client, or None while the store cannot be reached (the reconciler's form)."""
        try:
            return self.store()
        except UsageStoreError as exc:
            log.warning("usage store unavailable for reads: %s", exc)
            return None

    def close(self) -> None:
        with self._opening:
            self._closed = True
            store, self._store = self._store, None
        if store is not None:
            store.close()

    # ------------------------------------------------------------------ async (threads)

    async def report(
        self, customer_id: str, time_range: TimeRange, group_by: tuple[str, ...], currency: str
    ) -> dict[str, Any]:
        """A customer's usage by model and/or day (metering/report.py)."""

        def read() -> dict[str, Any]:
            return usage_report(self.store(), customer_id, time_range, group_by, currency)

        return await asyncio.to_thread(read)

    async def dashboard(
        self, time_range: TimeRange, customer_id: str | None, model: str | None
    ) -> dict[str, Any]:
        """The operators' view: per-minute series, latency quantiles, device hours."""

        def read() -> dict[str, Any]:
            store = self.store()
            minutes = per_minute(store, time_range, customer_id, model)
            return {
                "per_minute": [asdict(r) for r in minutes],
                "latency": [asdict(r) for r in latency_quantiles(store, time_range, model)],
                "operators": [asdict(r) for r in operator_hourly(store, time_range)],
                "errors_by_code": [
                    asdict(r) for r in errors_by_code(store, time_range, customer_id, model)
                ],
            }

        return await asyncio.to_thread(read)

    async def capacity_traffic(
        self, time_range: TimeRange, model: str | None
    ) -> list[ModelTraffic]:
        """Per model: requests, service-time moments, waits and arrivals (capacity planning)."""
        return await asyncio.to_thread(lambda: model_traffic(self.store(), time_range, model))

    async def series(
        self,
        time_range: TimeRange,
        bucket: str,
        group_by: str,
        customer_id: str | None,
        model: str | None,
    ) -> dict[str, list[SeriesPoint]]:
        """Charts' series per bucket (metering/series.py)."""
        return await asyncio.to_thread(
            lambda: usage_series(self.store(), time_range, bucket, group_by, customer_id, model)
        )

    async def records(
        self, *, request_id: str | None, job_id: str | None, customer_id: str | None
    ) -> list[StoredRecord]:
        """A request's or a job's records (metering/record_lookup.py)."""
        return await asyncio.to_thread(
            lambda: find_records(
                self.store(), request_id=request_id, job_id=job_id, customer_id=customer_id
            )
        )

    async def backend_activity(self, window: TimeRange) -> dict[str, BackendActivity]:
        """Each backend's last device and latest failures (metering/backend_activity.py)."""
        return await asyncio.to_thread(lambda: backend_activity(self.store(), window))

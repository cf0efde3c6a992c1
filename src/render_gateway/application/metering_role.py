"""What the replica holding the ``metering`` lease runs, started and stopped as one.

* the hot path's writer: the usage stream's ``clickhouse`` group into ClickHouse
  (metering/writer.py);
* the budgets' backstop: the ``budgets`` group, each record's budget settled once
  (budget_settler.py);
* the hold janitor: holds no request will settle any more, released (budget_janitor.py);
* the trim of the usage stream below every group's ack (a shared Redis keeps every record
  otherwise).

With the embedded chDB only this replica can open the usage store; the reconciler runs under
the same lease for that reason (services.py), and the other replicas relay usage reads here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from render_gateway.application.budget_janitor import HoldJanitor, hold_grace_seconds
from render_gateway.application.budget_settler import BudgetSettler
from render_gateway.auth.private_file import read_private_text
from render_gateway.config import GatewayConfig
from render_gateway.metering.meter import Meter
from render_gateway.metering.store import (
    UsageStore,
    UsageStoreError,
    UsageStoreLocked,
    default_usage_url,
    open_usage_store,
)
from render_gateway.metering.writer import UsageWriter
from render_gateway.scheduling.dispatch import RetryPolicy
from render_gateway.stores.budgets import BudgetStore
from render_gateway.stores.jobs import JobStore
from render_gateway.stores.usage_log import UsageStream

log = logging.getLogger(__name__)

# How often the metering holder trims the usage stream (below every consumer group's ack).
USAGE_TRIM_INTERVAL_S = 60.0


async def trim_usage_stream(
    usage_log: UsageStream, interval_s: float = USAGE_TRIM_INTERVAL_S
) -> None:
    """While this process holds the metering role: drop the usage entries every consumer
    group has acked, which the shared Redis would otherwise keep forever (a record's worth per
    request). A failure (Redis down) is logged and the next round tries again."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            trimmed = await asyncio.to_thread(usage_log.trim_acked)
        except Exception as exc:  # the stream's store down: the entries wait, nothing is lost
            log.warning("usage stream trim failed, will retry: %s", exc)
            continue
        if trimmed:
            log.debug("usage stream: %d entries every group acked trimmed", trimmed)


async def start_usage_writer(config: GatewayConfig, usage_log: UsageStream) -> UsageWriter:
    """The hot path's writer, started; UsageStoreLocked when another process owns the
    embedded store (a refusal at start, saying so)."""
    metering = config.metering
    url = metering.url or default_usage_url(Path(config.data_dir))
    password = read_private_text(metering.password_file) if metering.password_file else None

    def open_store() -> UsageStore:
        return open_usage_store(url, retention_days=metering.retention_days, password=password)

    writer = UsageWriter(
        usage_log, open_store, metering.batch_rows, metering.flush_interval_seconds
    )
    try:
        writer.store = await asyncio.to_thread(open_store)
    except UsageStoreLocked:
        raise
    except UsageStoreError as exc:  # a server that is down: records wait in the log
        log.warning("usage store %s unavailable at start, will retry: %s", url, exc)
    writer.start()
    return writer


class MeteringRole:
    def __init__(
        self,
        config: GatewayConfig,
        usage_log: UsageStream,
        meter: Meter,
        budgets: BudgetStore,
        jobs: JobStore,
    ) -> None:
        self._config, self._log, self._meter = config, usage_log, meter
        self._budgets, self._jobs = budgets, jobs
        self.writer: UsageWriter | None = None  # while the role runs here
        self.settler: BudgetSettler | None = None
        self.janitor: HoldJanitor | None = None
        self._trim: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.writer = await start_usage_writer(self._config, self._log)
        self._trim = asyncio.create_task(trim_usage_stream(self._log), name="usage-trim")
        self.settler = BudgetSettler(self._log, self._meter.settle_budget)
        self.settler.start()
        grace = hold_grace_seconds(RetryPolicy(**self._config.retry.model_dump()))
        self.janitor = HoldJanitor(self._budgets, self._jobs, grace)
        self.janitor.start()

    async def stop(self) -> None:
        janitor, self.janitor = self.janitor, None
        if janitor is not None:
            await janitor.stop()
        settler, self.settler = self.settler, None
        if settler is not None:
            await settler.stop()
        writer, self.writer = self.writer, None
        if writer is not None:
            await asyncio.to_thread(writer.stop, 5.0)
        trim, self._trim = self._trim, None
        if trim is not None:
            trim.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trim

    def notify(self) -> None:
        """A usage record was committed: wake the consumers that read it."""
        if self.writer is not None:
            self.writer.notify()
        if self.settler is not None:
            self.settler.notify()

"""Reconciliation inside serve: every ``interval_seconds``, the latest window that closed
``lateness_seconds`` ago; each run recorded (ClickHouse + a signed entry), exported on /metrics,
and alerted through the configured webhook when it is not ``reconciled``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from render_gateway.application.webhooks import WebhookSender
from render_gateway.audit.reconcile import Reconciliation, reconcile
from render_gateway.audit.reconcile_runs import record_run
from render_gateway.audit.signed_note import NoteSigner
from render_gateway.config import ReconcileConfig
from render_gateway.metering.queries import TimeRange
from render_gateway.metering.store import UsageStore
from render_gateway.stores.objects import ObjectStore
from render_gateway.url_policy import UrlRefused

log = logging.getLogger(__name__)


@dataclass
class ReconcileState:
    runs: int = 0
    last_run_at: float | None = None
    last_status: str | None = None
    last_discrepancies: int = 0  # differing keys + named requests + unreadable batches
    last_window_end: datetime | None = None


def discrepancies(run: Reconciliation) -> int:
    return len(run.keys) + sum(run.counts.values()) + len(run.unreadable_batches)


class Reconciler:
    def __init__(
        self,
        config: ReconcileConfig,
        usage_store: Callable[[], UsageStore | None],
        objects: ObjectStore,
        signer: NoteSigner,
        webhooks: WebhookSender,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._usage_store, self._objects, self._signer = usage_store, objects, signer
        self._webhooks, self._clock = webhooks, clock
        self._lock = asyncio.Lock()  # one run at a time (periodic and on demand)
        self._task: asyncio.Task[None] | None = None
        self.state = ReconcileState()

    def start(self) -> None:
        if self.config.enabled:
            self._task = asyncio.create_task(self._periodically(), name="reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def due_window(self) -> TimeRange:
        """The latest whole interval that ended at least ``lateness_seconds`` ago."""
        interval = self.config.interval_seconds
        end = math.floor((self._clock() - self.config.lateness_seconds) / interval) * interval
        return TimeRange(
            datetime.fromtimestamp(end - interval, UTC), datetime.fromtimestamp(end, UTC)
        )

    async def run(
        self, window: TimeRange, repair: bool | None = None, threshold: float | None = None
    ) -> Reconciliation:
        """One run (the configured repair and threshold unless given)."""
        limit = self.config.threshold if threshold is None else threshold
        fix = self.config.repair if repair is None else repair
        async with self._lock:
            started = datetime.now(UTC)
            result = await asyncio.to_thread(
                self._reconcile_and_record, window, started, fix, limit
            )
        self.state.runs += 1
        self.state.last_run_at = self._clock()
        self.state.last_status = result.status
        self.state.last_discrepancies = discrepancies(result)
        self.state.last_window_end = window.end
        if result.status != "reconciled":
            log.warning("reconciliation %s: %s (%s)", result.run_id, result.status, result.error)
            if self.config.alert_webhook:
                self._alert_now(self.config.alert_webhook, result)
        return result

    def _reconcile_and_record(
        self, window: TimeRange, started: datetime, repair: bool, threshold: float
    ) -> Reconciliation:
        usage = self._usage_store()
        if usage is None:
            result = Reconciliation("unavailable-" + started.strftime("%Y%m%dT%H%M%S"),
                                    window.start, window.end, threshold)  # fmt: skip
            result.status, result.error = "error", "the hot path (ClickHouse) is not reachable"
        else:
            result = reconcile(usage, self._objects, window, threshold, repair=repair)
        try:
            record_run(result, started, usage, self._objects, self._signer)
        except Exception:  # the check itself stands; only its record failed (logged)
            log.exception("could not record reconciliation run %s", result.run_id)
        return result

    def _alert_now(self, url: str, result: Reconciliation) -> None:
        # The sender holds alerts to the webhook policy as it does job webhooks (the config
        # check at start refuses a literal it forbids); a refusal must not fail the run.
        try:
            self._webhooks.send(url, self._alert(result), f"reconcile.{result.run_id}")
        except UrlRefused as exc:
            log.error("reconciliation alert not sent: %s", exc)

    @staticmethod
    def _alert(result: Reconciliation) -> dict[str, Any]:
        report = result.to_json()
        return {"type": "reconciliation." + result.status, "data": report}

    async def _periodically(self) -> None:
        while True:
            window = self.due_window()
            if self.state.last_window_end is None or window.end > self.state.last_window_end:
                try:
                    await self.run(window)
                except Exception:
                    log.exception("periodic reconciliation failed")
            await asyncio.sleep(min(60.0, self.config.interval_seconds / 5))

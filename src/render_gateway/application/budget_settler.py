"""The budgets' backstop: every usage record's budget settle, replayed from the usage stream.

A request ends in one commit of the job store: its terminal status and its usage record (with a
Redis job store, one Lua script that also XADDs the record to the stream). Its budget is settled
right after, in line (``Settlement``), but that is a second store: a replica killed between the
two would leave the request's hold standing and its cost unspent, for good. So the budget is
settled from the record as well, by this consumer group of the usage stream. The settle is
idempotent by request id (``BudgetStore.settle`` bills a key once), so whichever of the two
comes first bills it and the other changes nothing: status, record and budget end together,
exactly once, across any kill.

It runs with the ``metering`` role (one replica at a time, by lease); a process that takes the
role over resumes from the group's last ack. Records of months before the previous one are
acked without a settle: their holds are long gone, and the budget store remembers settled keys
only that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from render_gateway.core.months import month_of, previous_month
from render_gateway.stores.usage_log import BUDGET_GROUP, UsageStream

log = logging.getLogger(__name__)

SettleBudget = Callable[[str, Mapping[str, Any]], Awaitable[bool]]


def budget_key(record: Mapping[str, Any]) -> str:
    """The id a request's budget hold is kept under: its job's id (async), else its request id
    (sync) — the key ``Settlement`` settles it by."""
    return str(record.get("job_id") or record["request_id"])


class BudgetSettler:
    def __init__(
        self,
        usage_log: UsageStream,
        settle_budget: SettleBudget,
        *,
        batch: int = 500,
        idle_seconds: float = 1.0,
        coalesce_seconds: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log, self._settle = usage_log, settle_budget
        self._batch, self._idle, self._clock = batch, idle_seconds, clock
        # A wake waits this long for more records before reading: the backstop is off every
        # request's path (the in-line settle is on it), so reading a burst in one batch (two
        # thread hand-offs) instead of record by record costs nothing it promises. It read on
        # every commit's notify before: ~4% of the event loop under sync load (issue 16).
        self._coalesce = coalesce_seconds
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.settled = 0  # records whose settle only the backstop made (a missed in-line one)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="budget-settler")

    def notify(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def catch_up(self) -> int:
        """Settle every record the group has not acked; how many were read."""
        done = 0
        while True:
            entries = await asyncio.to_thread(self._log.read_group, BUDGET_GROUP, self._batch)
            if not entries:
                return done
            now = month_of(self._clock())
            recent = {now, previous_month(now)}
            for entry in entries:
                if month_of(float(entry.record["timestamp"])) in recent:
                    key = budget_key(entry.record)
                    if await self._settle(key, entry.record):
                        self.settled += 1
                        log.info("budget of %s settled from the usage stream", key)
            await asyncio.to_thread(self._log.ack, BUDGET_GROUP, entries[-1].seq)
            done += len(entries)

    async def _run(self) -> None:
        while True:
            try:
                await self.catch_up()
            except Exception:  # a store that is down: the entries wait, unacked
                log.exception("budget settler: catching up failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), self._idle)
            except TimeoutError:
                continue
            await asyncio.sleep(self._coalesce)  # let the burst that woke it arrive
            self._wake.clear()

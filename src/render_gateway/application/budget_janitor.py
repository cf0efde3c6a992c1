"""The hold janitor: budget holds that no request will ever settle are released.

A request's hold is settled when it ends (``Settlement``) and again from its usage record
(``BudgetSettler``). A hold with neither is left where a gateway process was killed:

* after the admission's reserve and before ``JobStore.submit`` stored the job (no job, no
  record);
* between a queued job's cancel or ttl commit (terminal, no record) and its release;
* during a sync request, before its record was appended.

Such a hold only ever refuses its customer early (it is never billed), but with many replicas
and kills they add up. So, with the ``metering`` role (one replica at a time), a pass every
``every_seconds`` releases each hold older than ``grace_seconds`` whose key is not a queued or
running job: no job at all (a sync request older than the longest a sync request may take is
over; a submit that never stored its job), or a terminal one (its record, if it has one, is
settled by the budget settler all the same: a settle after a release bills it once). Release is
idempotent and a settled key stays settled (stores/budgets.py), so a pass racing a settle bills
nothing twice and holds nothing again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from render_gateway.scheduling.dispatch import RetryPolicy
from render_gateway.stores.budgets import BudgetStore
from render_gateway.stores.jobs import JobStore

log = logging.getLogger(__name__)

# The least a hold is given before it may be taken for leaked, however short the timeouts.
MIN_GRACE_SECONDS = 300.0


def hold_grace_seconds(policy: RetryPolicy) -> float:
    """How old a hold must be before the janitor looks at it: twice the longest a sync request
    may run (every attempt to its timeout and its cancel's grace, with the backoffs between),
    and at least ``MIN_GRACE_SECONDS``."""
    attempts = policy.max_attempts
    longest = (
        attempts * (policy.run_timeout_seconds + policy.cancel_grace_seconds)
        + (attempts - 1) * policy.max_delay_seconds
    )
    return max(2 * longest, MIN_GRACE_SECONDS)


class HoldJanitor:
    def __init__(
        self,
        budgets: BudgetStore,
        jobs: JobStore,
        grace_seconds: float,
        *,
        every_seconds: float = 60.0,
        page: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._budgets, self._jobs = budgets, jobs
        self._grace, self._every, self._page = grace_seconds, every_seconds, page
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.released = 0  # leaked holds released since start

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hold-janitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep(self) -> int:
        """One pass over every hold older than the grace; how many it released."""
        cutoff = self._clock() - self._grace
        offset, released = 0, 0
        while True:
            aged = await self._budgets.holds_older_than(cutoff, offset=offset, limit=self._page)
            dropped = 0
            for hold in aged:
                job = await self._jobs.get(hold.key)
                if job is not None and not job.status.terminal:
                    continue  # queued or running: its own ending settles it
                if await self._budgets.release(hold.key) is not None:
                    dropped += 1
                    log.info(
                        "released the leaked budget hold %s of customer %s (made %.0f s ago, %s)",
                        hold.key, hold.customer_id, self._clock() - hold.created_at,
                        "no job" if job is None else f"job {job.status.value}",
                    )  # fmt: skip
            released += dropped
            if len(aged) < self._page:
                break
            offset += len(aged) - dropped  # what was released no longer counts in the order
        self.released += released
        return released

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # a store that is down: the next pass tries again
                log.exception("hold janitor: a pass failed; retrying")
            await asyncio.sleep(self._every)

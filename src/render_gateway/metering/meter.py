"""The metering hook: prices each finished request into a usage record, admits requests
against budgets, charges runs as they progress, and settles their reservations with what they
actually used.

The caller persists the record (with the job, or before a sync response) and then calls
``settled``, which settles the budget store and tells the hot-path writer there is more. The
budget store may be shared by many replicas (``gateway.stores.budgets``): every call that
touches it is awaited, and each is idempotent by request id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from render_gateway.core.budgets import Amount, BudgetLimit, BudgetState, Reservation
from render_gateway.core.months import month_of
from render_gateway.core.pricing import PriceTable
from render_gateway.core.usage_records import UsageRecord, build_record, cost_nanos
from render_gateway.metering.estimates import CostEstimator
from render_gateway.metering.work import Work
from render_gateway.stores.budgets import BudgetStore
from render_gateway.stores.unavailable import StoreUnavailable

# The code a run stopped because its customer's budget ran out ends with (job error, record
# error code and the sync tier's 402).
BUDGET_EXHAUSTED = "budget_exhausted"
# How many steps ahead a run is charged: the step the backend is in when a cancel arrives, and
# one more for a cancel that lands a step late (progress and cancel each cross the network).
STOP_LOOKAHEAD = 2
# ...plus the steps a run makes in the time this process's event loop has lately been behind
# (metering/loop_lag.py), above this much, which is what a loop keeping up shows.
LOOP_LAG_NOISE_SECONDS = 0.01


class Meter:
    def __init__(
        self,
        prices: PriceTable,
        budgets: BudgetStore,
        limit_for: Callable[[str, str], BudgetLimit],
        estimator: CostEstimator,
        on_record: Callable[[], None] = lambda: None,
        on_learned: Callable[[bool], None] = lambda _first: None,
    ) -> None:
        self.prices, self.budgets, self.estimator = prices, budgets, estimator
        self.limit_for = limit_for  # (customer id, plan) → its monthly limit, from the config
        self.on_record = on_record  # e.g. UsageWriter.notify
        # Backend node keys (key id → raw Ed25519 key, learned from /v2/node): each record's
        # signed claim is checked with them as it is built (the audit trail seals that result).
        self.node_keys: Mapping[str, bytes] = {}
        self.on_learned = on_learned  # e.g. save the estimates (True: a model's first run)
        # key → (its work, its customer, its plan), for the runs of this process
        self._work: dict[str, tuple[Work, str, str]] = {}
        # key → what the budget store last confirmed it holds for the request (its reservation,
        # then each charge): how far a run may go while the store cannot be reached
        self._held: dict[str, Amount] = {}
        # How far behind the event loop has run lately (LoopLag.worst): progress events and
        # cancels are that much later, so runs are charged that many more steps ahead.
        self.loop_lag: Callable[[], float] = lambda: 0.0
        self.budget_stops = 0  # runs stopped at a step because their budget ran out
        self.unverified_claims = 0  # records whose backend claim did not verify at settle

    def _amount(self, gpu_seconds: float, plan: str, family: str) -> Amount:
        return Amount(gpu_seconds, cost_nanos(gpu_seconds, self.prices.unit_price(plan, family)))

    async def admit(
        self, key: str, customer_id: str, plan: str, work: Work, now: float
    ) -> Reservation:
        """Reserve this request's estimated usage, or raise BudgetExceeded (nothing held)."""
        amount = self._amount(self.estimator.reservation(work), plan, work.family)
        limit = self.limit_for(customer_id, plan)
        reservation = await self.budgets.reserve(
            key, customer_id, plan, month_of(now), amount, limit
        )
        self._work[key] = (work, customer_id, plan)
        self._held[key] = amount
        return reservation

    def adopt(self, key: str, customer_id: str, plan: str, reservation: Mapping[str, Any]) -> None:
        """A run of this process whose job another replica (or this one before a restart)
        admitted: charge its progress from the reservation stored with the job. Without it the
        run would be charged nothing and never stopped at its budget."""
        if key in self._work or not isinstance(work := reservation.get("work"), Mapping):
            return
        self._work[key] = (Work.from_dict(work), customer_id, plan)
        held = Amount(float(reservation["gpu_seconds"]), int(reservation["cost_nanos"]))
        self._held.setdefault(key, held)

    async def restore(self, key: str, customer_id: str, reservation: Mapping[str, Any]) -> None:
        """Hold again what an admitted job had reserved before a restart."""
        amount = Amount(float(reservation["gpu_seconds"]), int(reservation["cost_nanos"]))
        month, plan = str(reservation["month"]), str(reservation.get("plan", ""))
        limit = self.limit_for(customer_id, plan)
        await self.budgets.reserve(key, customer_id, plan, month, amount, limit, force=True)
        self._held[key] = amount
        if isinstance(work := reservation.get("work"), Mapping):
            self._work[key] = (Work.from_dict(work), customer_id, plan)

    async def counted_already(self, key: str, customer_id: str, month: str) -> None:
        """``key``'s record is in the month's spend already (a ledger rebuilt from the usage
        log): settle it with nothing more, so that a later settle of it changes nothing."""
        await self.budgets.settle(key, customer_id, month, Amount())

    async def add_spent(self, customer_id: str, month: str, amount: Amount) -> None:
        await self.budgets.add_spent(customer_id, month, amount)

    async def state(self, customer_id: str, plan: str, month: str) -> BudgetState:
        limit = self.limit_for(customer_id, plan)
        return await self.budgets.state(customer_id, plan, month, limit)

    async def progress(
        self, key: str, step: int, steps: int, elapsed_seconds: float,
        gpu_seconds: float | None = None,
    ) -> bool:  # fmt: skip
        """A run reported ``step`` of ``steps`` done (and, where the backend measures it, its
        device time so far): hold what it will have used ``lookahead`` steps from now.
        False when that crosses the budget: the caller stops the run now. The backend is
        already in the next step when the cancel reaches it, and may be in the one after if
        the cancel is late, so the run ends at most one step past the budget (the backend's
        signed claim is the bill).

        While the budget store cannot be reached (Redis down), a run goes on only as far as
        what the store last confirmed holding for it covers; past that it is stopped, as if its
        budget had run out: a budget that cannot be checked is not spent blind."""
        known = self._work.get(key)
        if known is None or step <= 0:
            return True
        work, customer_id, plan = known
        ahead = lookahead(step, elapsed_seconds, gpu_seconds, self.loop_lag())
        next_step = min(step + ahead, max(steps, step))
        model = self.estimator.cost_after(work, next_step)
        if gpu_seconds:  # measured: never charge less than this run is on course to use
            estimate = max(gpu_seconds * next_step / step, model or 0.0)
        elif model is not None:
            estimate = model
        else:  # a model never seen, a backend that measures nothing: its wall pace (higher)
            estimate = elapsed_seconds * next_step / step
        needed = self._amount(estimate, plan, work.family)
        limit = self.limit_for(customer_id, plan)
        try:
            allowed = await self.budgets.charge(key, needed, limit)
        except StoreUnavailable:
            held = self._held.get(key)
            return limit.unlimited or (held is not None and _covers(held, needed, limit))
        if allowed:
            held = self._held.get(key, needed)
            self._held[key] = Amount(
                max(held.gpu_seconds, needed.gpu_seconds), max(held.cost_nanos, needed.cost_nanos)
            )
        return allowed

    def record(
        self,
        *,
        request_id: str,
        customer_id: str,
        plan: str,
        tier: Literal["sync", "async"],
        modality: str,
        family: str,
        model: str,
        created_at: float,
        started_at: float,
        ended_at: float,
        outcome: Literal["success", "error", "cancelled"],
        parameters: Mapping[str, Any],
        backend: str | None = None,
        error_code: str | None = None,
        job_id: str | None = None,
        attributed_seconds: float | None = None,
    ) -> UsageRecord:
        return build_record(
            request_id=request_id,
            customer_id=customer_id,
            plan=plan,
            tier=tier,
            modality=modality,
            family=family,
            model=model,
            created_at=created_at,
            started_at=started_at,
            ended_at=ended_at,
            outcome=outcome,
            parameters=parameters,
            unit_price=self.prices.unit_price(plan, family),
            currency=self.prices.currency,
            backend=backend,
            error_code=error_code,
            job_id=job_id,
            node_keys=self.node_keys,
            attributed_seconds=attributed_seconds,
        )

    async def settle_budget(self, key: str, record: Mapping[str, Any]) -> bool:
        """Replace the hold of ``key`` with what ``record`` bills, once (False: it was settled
        already). Called as each request settles, and again from the usage stream by the
        budget settler (application/budget_settler.py) for a settle a killed process missed."""
        billable = bool(record["billable"])
        actual = Amount(record["gpu_seconds"] if billable else 0.0, int(record["cost_nanos"]))
        month = month_of(record["timestamp"])
        return await self.budgets.settle(key, record["customer_id"], month, actual)

    async def settled(self, key: str, record: Mapping[str, Any] | None) -> None:
        """A request ended (``record`` as persisted), or was dropped before running (None)."""
        known = self._work.pop(key, None)
        self._held.pop(key, None)
        if record is None:
            await self.budgets.release(key)
            return
        if record.get("claim_error") is not None:
            self.unverified_claims += 1
        if record.get("error_code") == BUDGET_EXHAUSTED:
            self.budget_stops += 1
        await self.settle_budget(key, record)
        # Runs stopped early teach the cost per step as well as finished ones (their claims
        # say how many steps ran), so a budget that stops every run still learns its model.
        steps, status = int(record.get("num_steps") or 0), record["status"]
        if known and record["metered"] and status in ("success", "cancelled") and steps:
            finished = status == "success"
            gpu_seconds = float(record["gpu_seconds"])
            self.on_learned(self.estimator.observe(known[0], steps, gpu_seconds, finished))
        self.on_record()


def _covers(held: Amount, needed: Amount, limit: BudgetLimit) -> bool:
    """Whether ``held`` already covers ``needed`` in every unit the limit counts."""
    gpu = limit.gpu_seconds is None or needed.gpu_seconds <= held.gpu_seconds
    cost = limit.cost_nanos is None or needed.cost_nanos <= held.cost_nanos
    return gpu and cost


def lookahead(
    step: int, elapsed_seconds: float, gpu_seconds: float | None, loop_lag: float = 0.0
) -> int:
    """How many steps past ``step`` a run is charged: ``STOP_LOOKAHEAD``, plus as many as it
    makes at its pace so far (device time where measured, else wall time) in ``loop_lag``
    seconds beyond ``LOOP_LAG_NOISE_SECONDS``."""
    late = loop_lag - LOOP_LAG_NOISE_SECONDS
    pace = (gpu_seconds or elapsed_seconds) / step
    if late <= 0 or pace <= 0:
        return STOP_LOOKAHEAD
    return STOP_LOOKAHEAD + math.ceil(late / pace)

"""The metering hook: prices each finished request into a usage record, admits requests
against budgets, and settles their reservations with what they actually used.

No I/O: the caller persists the record (with the job, or before a sync response) and then
calls ``settled``, which updates the ledger and tells the hot-path writer there is more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from render_gateway.metering.budgets import (
    Amount,
    BudgetLedger,
    Reservation,
    ReservationEstimator,
    month_of,
)
from render_gateway.metering.pricing import PriceTable
from render_gateway.metering.records import UsageRecord, build_record, cost_nanos


class Meter:
    def __init__(
        self,
        prices: PriceTable,
        ledger: BudgetLedger,
        estimator: ReservationEstimator,
        on_record: Callable[[], None] = lambda: None,
    ) -> None:
        self.prices, self.ledger, self.estimator = prices, ledger, estimator
        self.on_record = on_record  # e.g. UsageWriter.notify

    def admit(
        self, key: str, customer_id: str, plan: str, family: str, model: str, now: float
    ) -> Reservation:
        """Reserve this request's estimated usage, or raise BudgetExceeded (nothing held)."""
        gpu_seconds = self.estimator.estimate(family, model)
        amount = Amount(gpu_seconds, cost_nanos(gpu_seconds, self.prices.unit_price(plan, family)))
        return self.ledger.reserve(key, customer_id, plan, month_of(now), amount)

    def restore(self, key: str, customer_id: str, reservation: Mapping[str, Any]) -> None:
        """Hold again what an admitted job had reserved before a restart."""
        amount = Amount(float(reservation["gpu_seconds"]), int(reservation["cost_nanos"]))
        month = str(reservation["month"])
        self.ledger.reserve(key, customer_id, "", month, amount, force=True)

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
        )

    def settled(self, key: str, record: Mapping[str, Any] | None) -> None:
        """A request ended (``record`` as persisted), or was dropped before running (None)."""
        if record is None:
            self.ledger.release(key)
            return
        billable = bool(record["billable"])
        actual = Amount(record["gpu_seconds"] if billable else 0.0, int(record["cost_nanos"]))
        self.ledger.settle(key, record["customer_id"], month_of(record["timestamp"]), actual)
        if record["metered"] and record["status"] == "success":
            self.estimator.observe(record["family"], record["model"], record["gpu_seconds"])
        self.on_record()

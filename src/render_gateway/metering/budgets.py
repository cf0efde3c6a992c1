"""Monthly budgets with reservations: a request is admitted only if what the customer has
spent this month, plus what their admitted-but-unfinished requests may still spend, plus this
request's own estimate, stays within the limit. The check and the reservation are one step
with no await in between, so concurrent requests in one process cannot both take the last of
a budget. When the request ends, its reservation is replaced by what it actually cost.

The ledger lives in one gateway process (rebuilt from the durable usage log at start); a
shared ledger for several replicas (Redis) is not built yet.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from render_gateway.metering.records import NANOS


def month_of(moment: float) -> str:
    """The budget period of a moment: its UTC calendar month, e.g. ``2026-11``."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m")


@dataclass(frozen=True)
class BudgetLimit:
    gpu_seconds: float | None = None
    cost_nanos: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.gpu_seconds is None and self.cost_nanos is None


@dataclass(frozen=True)
class Amount:
    gpu_seconds: float = 0.0
    cost_nanos: int = 0

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.gpu_seconds + other.gpu_seconds, self.cost_nanos + other.cost_nanos)

    def __sub__(self, other: Amount) -> Amount:
        return Amount(self.gpu_seconds - other.gpu_seconds, self.cost_nanos - other.cost_nanos)


@dataclass(frozen=True)
class Reservation:
    key: str
    customer_id: str
    month: str
    amount: Amount


class BudgetExceeded(Exception):
    def __init__(self, customer_id: str, what: str, limit: float, committed: float, asked: float):
        super().__init__(
            f"monthly {what} budget of {limit:g} would be exceeded: {committed:g} spent or "
            f"reserved this month, this request may use up to {asked:g}"
        )
        self.customer_id, self.what = customer_id, what
        self.limit, self.committed, self.asked = limit, committed, asked


@dataclass(frozen=True)
class BudgetState:
    limit: BudgetLimit
    spent: Amount
    reserved: Amount


class BudgetLedger:
    def __init__(self, limit_for: Callable[[str, str], BudgetLimit]) -> None:
        self._limit_for = limit_for  # (customer_id, plan) → limit
        self._spent: defaultdict[tuple[str, str], Amount] = defaultdict(Amount)
        self._reserved: defaultdict[tuple[str, str], Amount] = defaultdict(Amount)
        self._reservations: dict[str, Reservation] = {}

    def add_spent(self, customer_id: str, month: str, amount: Amount) -> None:
        """Count usage that has happened (at start: the month so far; then each settled record)."""
        self._spent[customer_id, month] += amount

    def reserve(
        self, key: str, customer_id: str, plan: str, month: str, amount: Amount, force: bool = False
    ) -> Reservation:
        """Admit and hold ``amount`` for request ``key``, or raise BudgetExceeded. ``force``
        holds it without checking (jobs admitted before a restart)."""
        limit = self._limit_for(customer_id, plan)
        if not force and not limit.unlimited:
            committed = self._spent[customer_id, month] + self._reserved[customer_id, month]
            total = committed + amount
            if limit.gpu_seconds is not None and total.gpu_seconds > limit.gpu_seconds:
                raise BudgetExceeded(
                    customer_id, "GPU-seconds", limit.gpu_seconds, committed.gpu_seconds,
                    amount.gpu_seconds,
                )  # fmt: skip
            if limit.cost_nanos is not None and total.cost_nanos > limit.cost_nanos:
                raise BudgetExceeded(
                    customer_id, "cost", limit.cost_nanos / NANOS, committed.cost_nanos / NANOS,
                    amount.cost_nanos / NANOS,
                )  # fmt: skip
        reservation = Reservation(key, customer_id, month, amount)
        self.release(key)  # a key holds at most one reservation
        self._reservations[key] = reservation
        self._reserved[customer_id, month] += amount
        return reservation

    def release(self, key: str) -> Reservation | None:
        """Drop a reservation without spending (a job cancelled while queued, a run refused)."""
        reservation = self._reservations.pop(key, None)
        if reservation is not None:
            month_key = (reservation.customer_id, reservation.month)
            self._reserved[month_key] -= reservation.amount
            if self._reserved[month_key] == Amount():
                del self._reserved[month_key]
        return reservation

    def settle(self, key: str, customer_id: str, month: str, actual: Amount) -> None:
        """Replace the reservation with the actual (billable) usage."""
        self.release(key)
        self.add_spent(customer_id, month, actual)

    def state(self, customer_id: str, plan: str, month: str) -> BudgetState:
        return BudgetState(
            self._limit_for(customer_id, plan),
            self._spent.get((customer_id, month), Amount()),
            self._reserved.get((customer_id, month), Amount()),
        )

    @property
    def open_reservations(self) -> int:
        return len(self._reservations)


class ReservationEstimator:
    """How much to reserve for a request: 1.5× the most GPU-seconds any run of the model has
    used so far, and never less than ``floor`` (the only estimate before the first run)."""

    def __init__(self, floor_gpu_seconds: float, factor: float = 1.5) -> None:
        self.floor, self.factor = floor_gpu_seconds, factor
        self._largest: dict[tuple[str, str], float] = {}

    def observe(self, family: str, model: str, gpu_seconds: float) -> None:
        key = (family, model)
        self._largest[key] = max(self._largest.get(key, 0.0), gpu_seconds)

    def estimate(self, family: str, model: str) -> float:
        return max(self.floor, self.factor * self._largest.get((family, model), 0.0))

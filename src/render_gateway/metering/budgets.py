"""Monthly budgets: the pure value types (limits, amounts, reservations, the refusal) that the
budget store (``stores/budgets.py``: a Protocol, ``memory://`` in ``stores/memory_budgets.py``)
and its callers share.

A request is admitted only if what the customer has spent this month, plus what their
admitted-but-unfinished requests hold, plus this request's own estimate, stays within the limit.
While a run goes on, its hold is raised to what it will have used after its next step; when that
no longer fits the caller stops the run, so the month ends above its budget by at most one step
per run in flight. When the request ends, its hold is replaced by what it actually cost.

``BudgetLedger`` is the synchronous in-process ledger the Meter still uses; it goes once the Meter
is switched to ``BudgetStore`` (``MemoryBudgetStore`` keeps its arithmetic).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace

from render_gateway.core.usage_records import NANOS


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
    plan: str = ""


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
        reservation = Reservation(key, customer_id, month, amount, plan)
        self.release(key)  # a key holds at most one reservation
        self._reservations[key] = reservation
        self._reserved[customer_id, month] += amount
        return reservation

    def charge(self, key: str, needed: Amount) -> bool:
        """The run ``key`` will have used ``needed`` after its next step: hold that much
        (never less than before). False, holding it anyway, when that crosses the limit — the
        caller then stops the run at that step."""
        held = self._reservations.get(key)
        if held is None:
            return True  # not admitted against a budget (or already settled)
        grown = Amount(
            max(held.amount.gpu_seconds, needed.gpu_seconds),
            max(held.amount.cost_nanos, needed.cost_nanos),
        )
        if grown == held.amount:
            return True
        month_key = (held.customer_id, held.month)
        self._reserved[month_key] += grown - held.amount
        self._reservations[key] = replace(held, amount=grown)
        limit = self._limit_for(held.customer_id, held.plan)
        total = self._spent[month_key] + self._reserved[month_key]
        return not (
            (limit.gpu_seconds is not None and total.gpu_seconds > limit.gpu_seconds)
            or (limit.cost_nanos is not None and total.cost_nanos > limit.cost_nanos)
        )

    def held(self, key: str) -> Reservation | None:
        return self._reservations.get(key)

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

"""Monthly budgets: the pure value types (limits, amounts, reservations, the refusal) that the
budget store (``stores/budgets.py``: a Protocol, ``memory://`` in ``stores/memory_budgets.py``)
and its callers share.

A request is admitted only if what the customer has spent this month, plus what their
admitted-but-unfinished requests hold, plus this request's own estimate, stays within the limit.
While a run goes on, its hold is raised to what it will have used after its next step; when that
no longer fits the caller stops the run, so the month ends above its budget by at most one step
per run in flight. When the request ends, its hold is replaced by what it actually cost.

The arithmetic lives in the budget store (``MemoryBudgetStore`` in process; a shared store for
many replicas), which the Meter calls with the limit of each request's customer and plan.
"""

from __future__ import annotations

from dataclasses import dataclass


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

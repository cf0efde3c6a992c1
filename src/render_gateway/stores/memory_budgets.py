"""``memory://`` budgets: one process's ledger. No operation awaits between its check and its
write, so each is atomic on the event loop: concurrent requests cannot both take the last of a
budget."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace

from render_gateway.core.budgets import (
    Amount,
    BudgetExceeded,
    BudgetLimit,
    BudgetState,
    Reservation,
)
from render_gateway.core.usage_records import NANOS
from render_gateway.stores.budgets import AgedHold


def crosses(limit: BudgetLimit, total: Amount) -> bool:
    return (limit.gpu_seconds is not None and total.gpu_seconds > limit.gpu_seconds) or (
        limit.cost_nanos is not None and total.cost_nanos > limit.cost_nanos
    )


def previous_month(month: str) -> str:
    year, number = (int(part) for part in month.split("-"))
    return f"{year - 1:04d}-12" if number == 1 else f"{year:04d}-{number - 1:02d}"


class MemoryBudgetStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._spent: defaultdict[tuple[str, str], Amount] = defaultdict(Amount)
        self._reserved: defaultdict[tuple[str, str], Amount] = defaultdict(Amount)
        self._reservations: dict[str, Reservation] = {}
        self._held_since: dict[str, float] = {}  # key → when its hold was made
        # Settled key → its month, so a second settle bills nothing. Kept for the key's month
        # and the next one (a record may settle a little after its month has ended).
        self._settled: dict[str, str] = {}
        self._newest_month = ""

    async def reserve(
        self,
        key: str,
        customer_id: str,
        plan: str,
        month: str,
        amount: Amount,
        limit: BudgetLimit,
        *,
        force: bool = False,
    ) -> Reservation:
        if (held := self._reservations.get(key)) is not None:
            return held
        reservation = Reservation(key, customer_id, month, amount, plan)
        if key in self._settled:
            return reservation  # its request is over: a hold now would never be settled
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
        self._reservations[key] = reservation
        self._held_since[key] = self._clock()
        self._reserved[customer_id, month] += amount
        return reservation

    async def charge(self, key: str, needed: Amount, limit: BudgetLimit) -> bool:
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
        return not crosses(limit, self._spent[month_key] + self._reserved[month_key])

    async def release(self, key: str) -> Reservation | None:
        return self._drop(key)

    def _drop(self, key: str) -> Reservation | None:
        reservation = self._reservations.pop(key, None)
        self._held_since.pop(key, None)
        if reservation is not None:
            month_key = (reservation.customer_id, reservation.month)
            self._reserved[month_key] -= reservation.amount
            if self._reserved[month_key] == Amount():
                del self._reserved[month_key]
        return reservation

    async def settle(self, key: str, customer_id: str, month: str, actual: Amount) -> bool:
        if key in self._settled:
            return False
        self._drop(key)
        self._spent[customer_id, month] += actual
        self._settled[key] = month
        self._forget_old_settlements(month)
        return True

    def _forget_old_settlements(self, month: str) -> None:
        if month <= self._newest_month:  # "YYYY-MM" sorts as the months do
            return
        self._newest_month = month
        oldest_kept = previous_month(month)
        for key in [k for k, m in self._settled.items() if m < oldest_kept]:
            del self._settled[key]

    async def add_spent(self, customer_id: str, month: str, amount: Amount) -> None:
        self._spent[customer_id, month] += amount

    async def state(
        self, customer_id: str, plan: str, month: str, limit: BudgetLimit
    ) -> BudgetState:
        return BudgetState(
            limit,
            self._spent.get((customer_id, month), Amount()),
            self._reserved.get((customer_id, month), Amount()),
        )

    async def open_reservations(self) -> int:
        return len(self._reservations)

    async def holds_older_than(
        self, cutoff: float, *, offset: int = 0, limit: int = 500
    ) -> list[AgedHold]:
        aged = sorted((t, key) for key, t in self._held_since.items() if t < cutoff)
        return [
            AgedHold(key, self._reservations[key].customer_id, t)
            for t, key in aged[offset : offset + limit]
        ]

    async def close(self) -> None:
        """Nothing to close: the ledger lives and ends with the process."""

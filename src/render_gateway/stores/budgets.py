"""The budget store: each customer's monthly spend and the holds of their admitted requests.

A request is admitted only if what the customer has spent this month, plus what their
admitted-but-unfinished requests hold, plus this request's own estimate, stays within the limit;
the check and the hold are one atomic step, so concurrent requests (on any replica sharing the
store) cannot both take the last of a budget. While a run goes on, ``charge`` raises its hold to
what it will have used a step or two ahead; when that crosses the limit the caller stops the run,
so a month ends above its budget by at most a step per run in flight. When the request ends,
``settle`` replaces its hold with what it actually cost.

Every operation is idempotent by request id (``key``): a retried reserve holds nothing twice, a
retried settle bills nothing twice. A shared store has no configuration, so each call that
checks a limit is given it (the caller's ``limit_for(customer, plan)``).

``memory://`` is this process only (rebuilt from the durable usage log at start with
``add_spent`` and forced reserves); ``redis://`` / ``rediss://`` (stores/redis_budgets.py) is
one ledger shared by every replica, each operation one Lua script.

Each hold remembers when it was made, so that a hold no request will ever settle (its process
was killed between the reserve and the job's commit, or between a cancel's commit and its
release) can be found and released by the hold janitor (application/budget_janitor.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from render_gateway.core.budgets import Amount, BudgetLimit, BudgetState, Reservation
from render_gateway.stores.urls import parse_store_url


@dataclass(frozen=True)
class AgedHold:
    """A hold and when it was made (seconds since the epoch)."""

    key: str
    customer_id: str
    created_at: float


class BudgetStore(Protocol):
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
        """Admit request ``key`` and hold ``amount`` in ``month``, or raise BudgetExceeded
        (nothing held). ``force`` holds it without checking (jobs admitted before a restart).
        A key already held returns its existing Reservation unchanged; a key already settled
        holds nothing (its request is over) and gets back the Reservation it asked for."""
        ...

    async def charge(self, key: str, needed: Amount, limit: BudgetLimit) -> bool:
        """The run ``key`` will have used ``needed`` a step or two from now: grow its hold to
        that (never shrink it). False when the month then crosses ``limit`` — the hold is grown
        anyway, so nothing else is admitted meanwhile, and the caller stops the run. True for
        a key not held (never admitted against a budget, released or settled)."""
        ...

    async def release(self, key: str) -> Reservation | None:
        """Drop the hold of ``key`` with nothing spent (cancelled while queued, refused run);
        the dropped Reservation, or None if it held nothing."""
        ...

    async def settle(self, key: str, customer_id: str, month: str, actual: Amount) -> bool:
        """Drop the hold of ``key`` and add ``actual`` (what it will be billed) to the month's
        spend, once: False, changing nothing, when ``key`` was settled already. Settled keys
        are remembered at least until the month after theirs has begun."""
        ...

    async def add_spent(self, customer_id: str, month: str, amount: Amount) -> None:
        """Count usage that has happened without a hold (at start: the month so far)."""
        ...

    async def state(
        self, customer_id: str, plan: str, month: str, limit: BudgetLimit
    ) -> BudgetState:
        """The month's limit (as given), spend and holds for the customer."""
        ...

    async def open_reservations(self) -> int:
        """How many holds there are (for /metrics)."""
        ...

    async def holds_older_than(
        self, cutoff: float, *, offset: int = 0, limit: int = 500
    ) -> list[AgedHold]:
        """The holds made before ``cutoff``, oldest first (ties by key), skipping the first
        ``offset`` of them, at most ``limit``. A hold made before this store kept creation
        times counts as made when it is first seen here."""
        ...

    async def close(self) -> None: ...


def open_budget_store(url: str) -> BudgetStore:
    """The budget store ``[gateway.stores] budgets`` names."""
    parsed = parse_store_url("budgets", url, ("memory", "redis", "rediss"))
    if parsed.scheme == "memory":
        from render_gateway.stores.memory_budgets import MemoryBudgetStore

        return MemoryBudgetStore()
    if parsed.scheme in ("redis", "rediss"):
        from render_gateway.stores.redis_budgets import RedisBudgetStore
        from render_gateway.stores.redis_client import open_redis

        return RedisBudgetStore(open_redis(url))
    raise AssertionError(f"unhandled scheme {parsed.scheme}")  # parse_store_url checked it

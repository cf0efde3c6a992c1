"""The budget ledger: admission is all-or-nothing, reservations settle to actual usage."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from render_gateway.core.months import month_of
from render_gateway.core.usage_records import NANOS
from render_gateway.metering.budgets import (
    Amount,
    BudgetExceeded,
    BudgetLedger,
    BudgetLimit,
)


def ledger(gpu: float | None = None, cost: float | None = None) -> BudgetLedger:
    limit = BudgetLimit(gpu, None if cost is None else round(cost * NANOS))
    return BudgetLedger(lambda customer, plan: limit if customer == "small" else BudgetLimit())


def test_month_is_the_utc_calendar_month() -> None:
    assert month_of(1_764_547_199.0) == "2025-11"  # 2025-11-30T23:59:59Z
    assert month_of(1_764_547_200.0) == "2025-12"


def test_reservations_count_against_the_limit_until_released() -> None:
    book = ledger(gpu=3.0)
    book.reserve("a", "small", "p", "2026-11", Amount(1.0))
    book.reserve("b", "small", "p", "2026-11", Amount(1.5))
    with pytest.raises(BudgetExceeded, match="GPU-seconds budget of 3"):
        book.reserve("c", "small", "p", "2026-11", Amount(1.0))
    book.release("a")
    book.reserve("c", "small", "p", "2026-11", Amount(1.0))
    assert book.state("small", "p", "2026-11").reserved.gpu_seconds == pytest.approx(2.5)


def test_settle_replaces_the_reservation_with_actual_usage() -> None:
    book = ledger(gpu=2.0)
    book.reserve("a", "small", "p", "2026-11", Amount(1.5))
    book.settle("a", "small", "2026-11", Amount(0.25))
    state = book.state("small", "p", "2026-11")
    assert (state.spent.gpu_seconds, state.reserved.gpu_seconds) == (0.25, 0.0)
    assert book.open_reservations == 0


def test_money_limit_and_other_months_and_customers_are_separate() -> None:
    book = ledger(cost=1.0)
    book.add_spent("small", "2026-10", Amount(0, NANOS))  # last month's spend does not count
    book.reserve("a", "small", "p", "2026-11", Amount(0, NANOS))
    with pytest.raises(BudgetExceeded, match="cost budget"):
        book.reserve("b", "small", "p", "2026-11", Amount(0, 1))
    book.reserve("c", "big", "p", "2026-11", Amount(10**6, 10**15))  # no limit for others


def test_a_refused_request_holds_nothing() -> None:
    book = ledger(gpu=1.0)
    with pytest.raises(BudgetExceeded):
        book.reserve("a", "small", "p", "2026-11", Amount(2.0))
    assert book.open_reservations == 0
    assert book.state("small", "p", "2026-11").reserved == Amount()


def test_forced_reservations_skip_the_check() -> None:
    book = ledger(gpu=1.0)
    book.reserve("a", "small", "p", "2026-11", Amount(5.0), force=True)
    with pytest.raises(BudgetExceeded):
        book.reserve("b", "small", "p", "2026-11", Amount(0.1))


@given(st.lists(st.tuples(st.floats(0.01, 2.0), st.floats(0.0, 1.0)), max_size=60))
def test_spent_never_exceeds_the_limit_when_usage_stays_within_reservations(
    runs: list[tuple[float, float]],
) -> None:
    """Any interleaving of admissions and settlements: what is spent stays within the budget
    as long as no run uses more than it reserved."""
    book, limit = ledger(gpu=5.0), 5.0
    rng = random.Random(len(runs))
    open_keys: list[tuple[str, float, float]] = []
    for index, (reserve, fraction) in enumerate(runs):
        try:
            book.reserve(str(index), "small", "p", "2026-11", Amount(reserve))
            open_keys.append((str(index), reserve, fraction))
        except BudgetExceeded:
            pass
        if open_keys and rng.random() < 0.5:
            key, reserved, used = open_keys.pop(rng.randrange(len(open_keys)))
            book.settle(key, "small", "2026-11", Amount(reserved * used))
        state = book.state("small", "p", "2026-11")
        assert state.spent.gpu_seconds + state.reserved.gpu_seconds <= limit + 1e-9


def test_a_charge_grows_the_hold_and_says_when_the_next_step_crosses_the_limit() -> None:
    book = ledger(gpu=3.0)
    book.reserve("a", "small", "p", "2026-11", Amount(1.0))
    book.reserve("b", "small", "p", "2026-11", Amount(1.0))
    assert book.charge("a", Amount(0.5))  # below what it holds: nothing changes
    assert book.state("small", "p", "2026-11").reserved.gpu_seconds == 2.0
    assert book.charge("a", Amount(2.0))  # 2.0 + 1.0 held by b = the limit: still fits
    assert not book.charge("a", Amount(2.25))  # crosses: held anyway, the caller stops it
    assert book.state("small", "p", "2026-11").reserved.gpu_seconds == 3.25
    with pytest.raises(BudgetExceeded):  # nothing new is admitted meanwhile
        book.reserve("c", "small", "p", "2026-11", Amount(0.01))
    book.settle("a", "small", "2026-11", Amount(2.2))
    assert book.state("small", "p", "2026-11").spent.gpu_seconds == 2.2
    assert book.charge("a", Amount(9.0))  # settled: no longer held, nothing to charge


def test_charges_follow_the_plan_the_request_was_admitted_under() -> None:
    limits = {"tight": BudgetLimit(1.0), "loose": BudgetLimit(100.0)}
    book = BudgetLedger(lambda customer, plan: limits.get(plan, BudgetLimit()))
    book.reserve("a", "c", "tight", "2026-11", Amount(0.5))
    assert not book.charge("a", Amount(1.5))
    book.reserve("b", "d", "loose", "2026-11", Amount(0.5))
    assert book.charge("b", Amount(50.0))

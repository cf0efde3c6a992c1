"""The meter under simulated concurrency: runs charged step by step against one budget never
end the month more than one step per run in flight above it."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from render_gateway.core.budgets import BudgetExceeded, BudgetLimit
from render_gateway.core.pricing import PlanPrices, PriceTable
from render_gateway.metering.estimates import CostEstimator
from render_gateway.metering.meter import Meter
from render_gateway.metering.work import Work
from render_gateway.stores.budgets import open_budget_store

MONTH_START = 1_796_083_200.0  # 2026-12-01T00:00:00Z


def meter(limit: float, floor: float = 0.2) -> Meter:
    prices = PriceTable({"default": PlanPrices(0.001, {})})
    budgets = open_budget_store("memory://")
    return Meter(prices, budgets, lambda customer, plan: BudgetLimit(limit), CostEstimator(floor))


def record(key: str, gpu_seconds: float, steps: int, status: str = "success") -> dict[str, object]:
    return {"customer_id": "c", "timestamp": MONTH_START + 60, "billable": True,
            "gpu_seconds": gpu_seconds, "cost_nanos": 0, "metered": True, "status": status,
            "num_steps": steps, "family": "sd", "model": "tiny"}  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    step_cost=st.floats(0.01, 0.3),
    fixed=st.floats(0.0, 0.2),
    concurrency=st.integers(1, 6),
    limit=st.floats(0.5, 5.0),
    warm=st.booleans(),
    measured=st.booleans(),
    late=st.booleans(),
)
def test_month_ends_at_most_one_step_per_run_in_flight_above_the_budget(
    seed: int,
    step_cost: float,
    fixed: float,
    concurrency: int,
    limit: float,
    warm: bool,
    measured: bool,
    late: bool,
) -> None:
    asyncio.run(
        simulate(
            seed, step_cost, fixed, concurrency, limit, warm=warm, measured=measured, late=late
        )
    )


async def simulate(
    seed: int,
    step_cost: float,
    fixed: float,
    concurrency: int,
    limit: float,
    *,
    warm: bool,
    measured: bool,
    late: bool,
) -> None:
    rng = random.Random(seed)
    m = meter(limit)
    if warm:  # the model's cost is known from earlier runs (other customers', other sizes)
        for steps in (4, 200, 30):
            m.estimator.observe(Work("sd", "tiny", "t2i", steps, 1.0), steps,
                                fixed + step_cost * steps)  # fmt: skip
    spent, started, ended = 0.0, 0, 0
    running: dict[str, dict[str, float]] = {}
    for round_ in range(400):
        while len(running) < concurrency:  # clients keep asking
            key = f"r{round_}-{len(running)}-{started}"
            steps = rng.choice((8, 20, 40, 200))
            try:
                await m.admit(
                    key, "c", "default", Work("sd", "tiny", "t2i", steps, 1.0), MONTH_START
                )
            except BudgetExceeded:
                break
            running[key] = {"steps": steps, "done": 0, "stop_after": 0}
            started += 1
        if not running:
            break
        key = rng.choice(list(running))  # one step of one run, in any interleaving
        run = running[key]
        run["done"] += 1
        used = fixed + step_cost * run["done"]
        last = run["done"] == run["steps"] or run["done"] == run["stop_after"]
        charged = last or await m.progress(
            key, int(run["done"]), int(run["steps"]), 3 * used, used if measured else None
        )
        if not charged and not run["stop_after"]:
            # The cancel lands during the next step (or, late, during the one after).
            run["stop_after"] = run["done"] + (2 if late else 1)
        if last:
            status = "success" if run["done"] == run["steps"] else "cancelled"
            await m.settled(key, record(key, used, int(run["done"]), status))
            spent += used
            del running[key]
            ended += 1
    for key, run in running.items():  # what is still running finishes its current step
        used = fixed + step_cost * (run["done"] + 1)
        await m.settled(key, record(key, used, int(run["done"]) + 1, "cancelled"))
        spent += used
    # Each run in flight ends at most one step past the budget, a late cancel included; while
    # the model is unknown, a run's first step (with the fixed part) is not charged before it
    # ends, so it may run that one and the next (and one more when the cancel is late).
    bound = concurrency * (step_cost if warm else fixed + (3 if late else 2) * step_cost)
    assert spent <= limit + bound + 1e-9, (spent, limit, bound)

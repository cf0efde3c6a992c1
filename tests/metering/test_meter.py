"""The meter under simulated concurrency: runs charged step by step against one budget never
end the month more than one step per run in flight above it."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from render_gateway.core.budgets import BudgetExceeded, BudgetLimit, Reservation
from render_gateway.core.pricing import PlanPrices, PriceTable
from render_gateway.metering.estimates import CostEstimator
from render_gateway.metering.meter import STOP_LOOKAHEAD, Meter, lookahead
from render_gateway.metering.work import Work
from render_gateway.stores.budgets import BudgetStore, open_budget_store

from support.processes import stop_process
from support.redis_server import start_redis

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


def reservation_of(held: Reservation, work: Work) -> dict[str, object]:
    """What admission stores with a job (application/job_cases.py)."""
    return {"gpu_seconds": held.amount.gpu_seconds, "cost_nanos": held.amount.cost_nanos,
            "month": held.month, "work": work.to_dict()}  # fmt: skip


def shared_meter(budgets: BudgetStore, limit: float) -> Meter:
    prices = PriceTable({"default": PlanPrices(0.001, {})})
    return Meter(prices, budgets, lambda customer, plan: BudgetLimit(limit), CostEstimator(0.2))


async def test_a_run_admitted_by_another_replica_is_charged_and_stopped_here() -> None:
    """Replica A admits, replica B claims and runs: B's meter never saw the admission, and
    must still charge the run from the reservation stored with the job, and stop it."""
    budgets = open_budget_store("memory://")
    admitting, running = shared_meter(budgets, 2.5), shared_meter(budgets, 2.5)
    work = Work("sd", "tiny", "t2i", 40, 1.0)
    held = await admitting.admit("j1", "c", "default", work, MONTH_START)
    running.adopt("j1", "c", "default", reservation_of(held, work))
    verdicts = [await running.progress("j1", step, 40, 0.25 * step, 0.25 * step)
                for step in range(1, 41)]  # fmt: skip
    # 0.25 GPU-s a step against 2.5: stopped at the first step k whose k + 2 crosses it
    # (0.25 x 11 = 2.75), not let run its 40 steps (10 GPU-s) as it was before adopt.
    assert verdicts.index(False) + 1 == 9, verdicts
    unaware = shared_meter(budgets, 2.5)  # what a meter that did not adopt the run does
    assert await unaware.progress("j1", 20, 40, 5.0, 5.0)


async def test_while_the_budget_store_is_down_a_run_goes_only_as_far_as_its_hold(
    tmp_path: Path,
) -> None:
    """Redis down mid-run: a charge cannot be made. The run continues while what the store
    last confirmed holding for it covers the next steps, and is stopped beyond — never
    charged blind; a customer without a limit is never stopped for it."""
    server = start_redis(tmp_path / "redis")
    budgets = open_budget_store(server.url)
    try:
        limited = shared_meter(budgets, 100.0)
        work = Work("sd", "tiny", "t2i", 40, 1.0)
        await limited.admit("j1", "c", "default", work, MONTH_START)  # holds 0.2 (the floor)
        assert await limited.progress("j1", 1, 40, 0.25, 0.25)  # charged: holds 0.75
        stop_process(server.process)
        assert await limited.progress("j1", 1, 40, 0.25, 0.25)  # still 0.75: covered
        assert not await limited.progress("j1", 2, 40, 0.5, 0.5)  # needs 1.0: stop
        unlimited = Meter(
            PriceTable({"default": PlanPrices(0.001, {})}), budgets,
            lambda customer, plan: BudgetLimit(), CostEstimator(0.2),
        )  # fmt: skip
        stored = {"gpu_seconds": 0.2, "cost_nanos": 0, "month": "2026-12", "work": work.to_dict()}
        unlimited.adopt("j2", "c", "default", stored)
        assert await unlimited.progress("j2", 30, 40, 7.5, 7.5)
    finally:
        await budgets.close()
        stop_process(server.process)


async def test_while_the_loop_runs_late_short_steps_are_charged_that_far_ahead() -> None:
    """50 ms steps and a loop lately 0.21 s behind: a progress event holds 2 + 4 steps ahead,
    so a cancel that much late still ends the run within a step of the budget; with the loop
    keeping up, two steps ahead, as before (a small budget is not left unused)."""
    assert lookahead(4, 0.2, 0.2) == STOP_LOOKAHEAD  # the loop keeps up
    assert lookahead(4, 0.2, 0.2, 0.005) == STOP_LOOKAHEAD  # a few ms: noise
    assert lookahead(4, 0.2, 0.2, 0.21) == STOP_LOOKAHEAD + 4  # 0.2 s beyond noise / 0.05 s
    assert lookahead(4, 0.4, None, 0.21) == STOP_LOOKAHEAD + 2  # no device time: wall's pace
    assert lookahead(4, 0.0, None, 0.21) == STOP_LOOKAHEAD  # no pace known yet
    budgets = open_budget_store("memory://")
    for lag, late_steps in ((0.21, 4), (0.0, 0)):
        meter = shared_meter(budgets, 1.0)
        meter.loop_lag = lambda lag=lag: lag  # type: ignore[misc]
        work = Work("sd", "tiny", "t2i", 40, 1.0)
        key = f"j{lag}"
        await meter.admit(key, "c" + key, "default", work, MONTH_START)
        verdicts = [await meter.progress(key, step, 40, 0.05 * step, 0.05 * step)
                    for step in range(1, 41)]  # fmt: skip
        stopped_at = verdicts.index(False) + 1
        # The backend is one step on when a timely cancel lands, and late_steps more when late.
        ended = stopped_at + 1 + late_steps
        assert 0.05 * ended <= 1.0 + 0.05 + 1e-9, (lag, verdicts)
        assert 0.05 * ended > 1.0 - 0.05 * (STOP_LOOKAHEAD + late_steps + 1), (lag, verdicts)
    await budgets.close()

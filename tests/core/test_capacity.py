"""Capacity planning: the queueing formulas against closed forms and published values, their
shape (hypothesis), a seeded discrete-event simulation of the queues they describe, and the
plan's figures and warnings."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from render_gateway.core.capacity import (
    MAX_POINTS,
    MGC,
    MMC,
    Observation,
    plan_capacity,
)
from render_gateway.core.queueing import (
    allen_cunneen_wait,
    erlang_b,
    erlang_c,
    exponential_tail_quantile,
    index_of_dispersion,
    mmc_mean_wait,
    mmc_wait_quantile,
    pollaczek_khinchine_wait,
)

# ---------------------------------------------------------------- closed forms


def test_erlang_b_and_c_textbook_values() -> None:
    assert erlang_b(1, 1.0) == pytest.approx(0.5)
    assert erlang_b(2, 1.0) == pytest.approx(0.2)  # (1/2) / (1 + 1 + 1/2)
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(1, 0.7) == pytest.approx(0.7)  # M/M/1: P(wait) = ρ


def test_erlang_c_worked_example() -> None:
    # The classic call-centre sizing example: 360 calls per half hour of 240 s each (48
    # Erlangs) on 55 agents: P(wait) 23.87 %, mean wait (ASA) 8.18 s, 86.7 % answered within
    # 20 s (P(Wq ≤ t) = 1 − C·exp(−(cμ − λ)t)).
    lam, mean, c = 360 / 1800, 240.0, 55
    a = lam * mean
    assert a == pytest.approx(48)
    c_prob = erlang_c(c, a)
    assert c_prob == pytest.approx(0.2387, abs=1e-4)
    assert mmc_mean_wait(c, lam, mean, c_prob) == pytest.approx(8.18, abs=0.01)
    assert 1 - c_prob * math.exp(-(c / mean - lam) * 20) == pytest.approx(0.8668, abs=1e-3)


def test_erlang_b_is_stable_for_large_servers() -> None:
    # The factorial form overflows here; the recursion does not.
    b = erlang_b(2000, 1900.0)
    assert 0 < b < 0.05 and math.isfinite(erlang_c(2000, 1900.0))


def test_mm1_wait_is_rho_over_mu_minus_lambda() -> None:
    lam, mean = 0.8, 1.0  # μ = 1
    rho = lam * mean
    assert mmc_mean_wait(1, lam, mean, erlang_c(1, rho)) == pytest.approx(rho / (1 - lam))
    # P(Wq > t) = ρ·exp(−(μ − λ)t): t95 = ln(ρ / 0.05) / (μ − λ)
    t95 = mmc_wait_quantile(1, lam, mean, erlang_c(1, rho))
    assert t95 == pytest.approx(math.log(0.8 / 0.05) / 0.2)


def test_p95_is_zero_when_few_arrivals_wait() -> None:
    c_prob = erlang_c(4, 0.5)
    assert c_prob < 0.05
    assert mmc_wait_quantile(4, 0.5, 1.0, c_prob) == 0.0


def test_pollaczek_khinchine_md1_is_half_of_mm1() -> None:
    lam, mean = 0.6, 1.0
    mm1 = pollaczek_khinchine_wait(lam, mean, mean * mean)  # exponential: Var = E[S]²
    md1 = pollaczek_khinchine_wait(lam, mean, 0.0)
    assert mm1 == pytest.approx(0.6 / 0.4)
    assert md1 == pytest.approx(mm1 / 2)


def test_allen_cunneen_is_exact_at_the_ends() -> None:
    lam, mean = 0.6, 1.0
    mm1 = mmc_mean_wait(1, lam, mean, erlang_c(1, 0.6))
    assert allen_cunneen_wait(mm1, 1.0, 1.0) == pytest.approx(mm1)
    assert allen_cunneen_wait(mm1, 1.0, 0.0) == pytest.approx(
        pollaczek_khinchine_wait(lam, mean, 0.0)
    )


def test_unstable_queues_wait_forever() -> None:
    assert mmc_mean_wait(2, 2.0, 1.0, erlang_c(2, 2.0)) == math.inf
    assert pollaczek_khinchine_wait(1.0, 1.0, 0.0) == math.inf
    assert exponential_tail_quantile(1.0, math.inf, 0.95) == math.inf


def test_index_of_dispersion() -> None:
    assert index_of_dispersion((5, 5, 5, 5)) == 0.0
    assert index_of_dispersion((0, 10)) == pytest.approx(50 / 5)
    assert index_of_dispersion((3,)) is None and index_of_dispersion((0, 0)) is None


# ---------------------------------------------------------------- shape (hypothesis)


@given(
    a=st.floats(min_value=0.01, max_value=200.0),
    extra=st.integers(min_value=1, max_value=40),
)
def test_waits_fall_as_servers_are_added(a: float, extra: int) -> None:
    c = math.floor(a) + extra
    mean = 1.0
    waits = [mmc_mean_wait(k, a, mean, erlang_c(k, a)) for k in (c, c + 1)]
    assert waits[1] <= waits[0]
    assert 0 <= erlang_c(c + 1, a) <= erlang_c(c, a) <= 1


@given(c=st.integers(min_value=1, max_value=50))
def test_waits_grow_without_bound_as_utilisation_nears_one(c: int) -> None:
    waits = [mmc_mean_wait(c, rho * c, 1.0, erlang_c(c, rho * c)) for rho in (0.9, 0.99, 0.9999)]
    assert waits[0] < waits[1] < waits[2]
    assert waits[2] > 100 * waits[0] / c


@given(
    rate=st.floats(min_value=0.01, max_value=50.0),
    mean=st.floats(min_value=0.01, max_value=10.0),
    target=st.floats(min_value=0.0, max_value=60.0),
)
@example(rate=1.00001, mean=1.9999999999999982, target=0.0)  # found by a full run
def test_servers_needed_is_the_smallest_that_meets_the_target(
    rate: float, mean: float, target: float
) -> None:
    # The rate the observation carries: whole arrivals over its hour (1.00001/s is 3600 of
    # them, so 1.0/s: with a mean of 1.9999999999999982 s the offered load is below 2, not above).
    rate = round(rate * 3600.0) / 3600.0
    plan = plan_capacity(_observation(rate, mean, mean * mean, servers=1), target)
    needed = plan.servers_needed
    assert needed is not None and needed > rate * mean
    points = {p.servers: p for p in plan.by_servers}
    assert points[needed].p95_wait_s <= target and points[needed].utilisation < 1
    if needed - 1 in points:
        assert points[needed - 1].p95_wait_s > target
    stable_from = math.floor(rate * mean) + 1
    assert min(points) == stable_from  # the series starts at the fewest stable servers
    last = max(2 * needed, stable_from + 1)  # ... and runs to about twice the servers needed
    span = last - stable_from + 1
    if span <= MAX_POINTS:
        assert sorted(points) == list(range(stable_from, last + 1))
    else:  # strided, with the servers needed kept
        stride = math.ceil(span / MAX_POINTS)
        assert last - stride < max(points) <= last and len(points) <= MAX_POINTS + 2


# ---------------------------------------------------------------- simulation


def simulate_waits(
    arrival_rate: float, service: Callable[[random.Random], float], servers: int, n: int, seed: int
) -> list[float]:
    """Queue waits of ``n`` customers of a FCFS queue with Poisson arrivals: each arrival takes
    the server that frees first (exact for FCFS with identical servers)."""
    rng = random.Random(seed)
    free_at = [0.0] * servers
    now, waits = 0.0, []
    for _ in range(n):
        now += rng.expovariate(arrival_rate)
        earliest = heapq.heappop(free_at)
        start = max(now, earliest)
        waits.append(start - now)
        heapq.heappush(free_at, start + service(rng))
    return waits[n // 10 :]  # the first tenth warms the queue up


def _p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * len(values))]


def test_simulated_mmc_matches_erlang_c() -> None:
    lam, mean, c = 2.4, 1.0, 3  # ρ = 0.8
    waits = simulate_waits(lam, lambda r: r.expovariate(1 / mean), c, 200_000, seed=7)
    c_prob = erlang_c(c, lam * mean)
    assert sum(waits) / len(waits) == pytest.approx(mmc_mean_wait(c, lam, mean, c_prob), rel=0.05)
    assert _p95(waits) == pytest.approx(mmc_wait_quantile(c, lam, mean, c_prob), rel=0.05)
    assert sum(w > 0 for w in waits) / len(waits) == pytest.approx(c_prob, rel=0.03)


def test_simulated_md1_matches_pollaczek_khinchine() -> None:
    lam, mean = 0.7, 1.0
    waits = simulate_waits(lam, lambda r: mean, 1, 200_000, seed=11)
    wq = pollaczek_khinchine_wait(lam, mean, 0.0)
    assert sum(waits) / len(waits) == pytest.approx(wq, rel=0.05)
    # The exponential-tail p95 is an approximation for M/G/1: for M/D/1 at ρ = 0.7 it is
    # 8–9 % above the simulated one over several seeds.
    assert _p95(waits) == pytest.approx(exponential_tail_quantile(0.7, wq, 0.95), rel=0.12)


def test_simulated_mgc_is_near_allen_cunneen() -> None:
    lam, mean, c = 3.2, 1.0, 4  # ρ = 0.8, uniform service on [0.5, 1.5]: c_s² = 1/12
    waits = simulate_waits(lam, lambda r: r.uniform(0.5, 1.5), c, 200_000, seed=3)
    mmc = mmc_mean_wait(c, lam, mean, erlang_c(c, lam * mean))
    # An approximation: within 10 % here (published comparisons show a few % to ~15 %).
    assert sum(waits) / len(waits) == pytest.approx(allen_cunneen_wait(mmc, 1.0, 1 / 12), rel=0.10)


# ---------------------------------------------------------------- the plan


def _observation(
    rate: float,
    mean: float,
    variance: float,
    servers: int,
    window: float = 3600.0,
    wait: float = 0.0,
    queue_length: float | None = None,
    minutes: tuple[int, ...] = (),
) -> Observation:
    n = round(rate * window)
    length = rate * wait if queue_length is None else queue_length
    return Observation("image/sd/tiny", window, n, mean, variance, wait, length, servers, minutes)


def test_plan_figures_carry_their_formulas_and_match_the_formulas() -> None:
    plan = plan_capacity(_observation(0.8, 1.0, 1.0, servers=1, wait=4.0), 10.0)
    figures = plan.figures
    assert plan.planning_model == MMC
    assert figures["utilisation"].value == pytest.approx(0.8)
    assert figures["mmc_mean_wait"].value == pytest.approx(0.8 / 0.2)
    assert "Erlang C" in figures["mmc_mean_wait"].formula
    assert "Pollaczek" in figures["mg_mean_wait"].formula
    assert figures["little_queue_length"].value == pytest.approx(3.2)
    assert all(f.formula for f in figures.values())
    body = plan.to_dict()
    assert body["figures"]["arrival_rate"] == {"value": 0.8, "formula": "λ = n / window",
                                               "unit": "1/s"}  # fmt: skip
    assert body["by_servers"][0]["servers"] == 1 and not body["warnings"]


def test_plan_warns_when_unstable_and_plans_beyond() -> None:
    plan = plan_capacity(_observation(3.0, 1.0, 1.0, servers=2), 1.0)
    assert any("unstable" in w for w in plan.warnings)
    assert plan.to_dict()["figures"]["mmc_mean_wait"]["value"] is None
    needed = plan.servers_needed
    assert needed is not None and needed >= 4
    assert plan.by_servers[0].servers == 4  # the fewest that are stable


def test_plan_cites_pollaczek_khinchine_for_non_exponential_service() -> None:
    plan = plan_capacity(_observation(0.6, 1.0, 0.0, servers=1), 10.0)
    assert plan.planning_model == MGC
    assert any("CV = 0.00" in w and "Pollaczek" in w for w in plan.warnings)
    assert plan.figures["predicted_mean_wait"].value == pytest.approx(
        pollaczek_khinchine_wait(0.6, 1.0, 0.0)
    )


def test_plan_warns_of_few_samples_little_mismatch_and_bursty_arrivals() -> None:
    few = plan_capacity(_observation(0.005, 1.0, 1.0, servers=1), 1.0)
    assert any("only 18 requests" in w for w in few.warnings)
    mismatch = plan_capacity(_observation(1.0, 0.5, 0.25, 1, wait=1.0, queue_length=0.5), 1.0)
    assert any("Little's law" in w and "50%" in w for w in mismatch.warnings)
    bursty = (0, 0, 0, 120, 0, 0, 0, 120, 0, 0, 0, 120) * 5
    burst = plan_capacity(_observation(0.5, 0.5, 0.25, 1, minutes=bursty), 1.0)
    assert any("burstier than Poisson" in w for w in burst.warnings)
    rng = random.Random(5)
    poisson = tuple(_poisson(rng, 30.0) for _ in range(60))
    steady = plan_capacity(_observation(0.5, 0.5, 0.25, 1, minutes=poisson), 1.0)
    assert not any("Poisson" in w for w in steady.warnings)


def _poisson(rng: random.Random, mean: float) -> int:
    count, total = 0, rng.expovariate(1.0)
    while total < mean:
        count += 1
        total += rng.expovariate(1.0)
    return count


def test_plan_with_no_traffic_or_no_servers() -> None:
    empty = plan_capacity(_observation(0.0, 0.0, 0.0, servers=2), 1.0)
    assert empty.planning_model is None and empty.servers_needed is None
    assert "no requests in the window" in empty.warnings[-1]
    orphan = plan_capacity(_observation(0.5, 1.0, 1.0, servers=0), 1.0)
    assert any("no configured backend" in w for w in orphan.warnings)
    assert orphan.servers_needed is not None
    with pytest.raises(ValueError, match="target"):
        plan_capacity(_observation(0.5, 1.0, 1.0, servers=1), -1.0)

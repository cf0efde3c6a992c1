"""Capacity planning for one model's queue: what the observed load means for waits, and how many
servers (GPU slots) keep the 95th percentile of the queue wait under a target.

Pure: an :class:`Observation` (what the hot path measured over a window) in, a
:class:`CapacityPlan` out. Every figure carries the formula it came from, and the plan warns
where the data contradict the model's assumptions (Poisson arrivals, exponential service,
stationarity), so that a reader knows how far to trust each number. The formulas are in
core/queueing.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from render_gateway.core.queueing import (
    allen_cunneen_wait,
    erlang_b_series,
    erlang_c_from_b,
    exponential_tail_quantile,
    index_of_dispersion,
    mmc_mean_wait,
    mmc_wait_quantile,
)

QUANTILE = 0.95
# Below this many requests the sample mean and variance of service time are rough.
MIN_SAMPLES = 30
# |c_s − 1| beyond this: service is not exponential enough for M/M/c (c_s 0.5 .. 1.5).
CV_TOLERANCE = 0.5
LITTLE_TOLERANCE = 0.20  # measured L against λ·W̄q
LITTLE_FLOOR = 0.01  # queue lengths below this are too small to compare
MIN_DISPERSION_MINUTES = 10
DISPERSION_Z = 3.0  # standard errors from 1 before arrivals are called non-Poisson
MAX_SERVERS = 100_000  # the search for enough servers gives up here
MAX_POINTS = 200  # the by-servers series is strided beyond this many points

MMC = "M/M/c"
MGC = "M/G/c"


@dataclass(frozen=True)
class Observation:
    """One model's queue over a window, as measured from its usage records."""

    model: str
    window_seconds: float
    requests: int
    service_mean_s: float
    service_variance_s2: float
    measured_mean_wait_s: float
    measured_queue_length: float  # time-averaged number waiting over the window
    servers: int  # backend slots serving the model
    minute_counts: tuple[int, ...] = ()  # arrivals per whole minute of the window


@dataclass(frozen=True)
class Figure:
    value: float | None  # None: undefined here (no data; infinite for an unstable queue)
    formula: str
    unit: str = ""

    def to_dict(self) -> dict[str, Any]:
        value = self.value
        if value is not None and not math.isfinite(value):
            value = None
        return {"value": value, "formula": self.formula, "unit": self.unit}


@dataclass(frozen=True)
class ServerPoint:
    """The planning model's prediction with ``servers`` servers."""

    servers: int
    utilisation: float
    mean_wait_s: float
    p95_wait_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "servers": self.servers,
            "utilisation": self.utilisation,
            "mean_wait_s": _finite(self.mean_wait_s),
            "p95_wait_s": _finite(self.p95_wait_s),
        }


@dataclass(frozen=True)
class CapacityPlan:
    model: str
    requests: int
    servers: int
    target_p95_wait_s: float
    planning_model: str | None  # MMC or MGC; None when there is nothing to plan from
    figures: dict[str, Figure] = field(default_factory=dict)
    by_servers: tuple[ServerPoint, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def servers_needed(self) -> int | None:
        figure = self.figures.get("servers_needed")
        return None if figure is None or figure.value is None else int(figure.value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "requests": self.requests,
            "servers": self.servers,
            "target_p95_wait_s": self.target_p95_wait_s,
            "planning_model": self.planning_model,
            "figures": {name: figure.to_dict() for name, figure in self.figures.items()},
            "by_servers": [point.to_dict() for point in self.by_servers],
            "warnings": list(self.warnings),
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class _Waits:
    """The figures that depend on the number of servers."""

    servers: int
    utilisation: float
    wait_probability: float
    mmc_mean: float
    mmc_p95: float
    mg_mean: float
    mg_p95: float

    def planned(self, model: str) -> tuple[float, float]:
        return (self.mmc_mean, self.mmc_p95) if model == MMC else (self.mg_mean, self.mg_p95)


def _waits(c: int, b: float, rate: float, mean: float, scv: float) -> _Waits:
    a = rate * mean
    rho = a / c
    if rho >= 1:
        return _Waits(c, rho, 1.0, math.inf, math.inf, math.inf, math.inf)
    c_prob = erlang_c_from_b(c, a, b)
    mmc_mean = mmc_mean_wait(c, rate, mean, c_prob)
    mg_mean = allen_cunneen_wait(mmc_mean, 1.0, scv)
    return _Waits(
        c, rho, c_prob, mmc_mean, mmc_wait_quantile(c, rate, mean, c_prob, QUANTILE), mg_mean,
        exponential_tail_quantile(c_prob, mg_mean, QUANTILE),
    )  # fmt: skip


def _series(rate: float, mean: float, scv: float, up_to: int) -> list[_Waits]:
    """The waits for c = 1 .. ``up_to`` (Erlang B carried along the recursion)."""
    found = []
    for c, b in erlang_b_series(rate * mean):
        found.append(_waits(c, b, rate, mean, scv))
        if c >= up_to:
            return found
    raise AssertionError("unreachable")  # pragma: no cover


def _needed(rate: float, mean: float, scv: float, model: str, target: float) -> int | None:
    """The fewest servers with ρ < 1 and the planning model's p95 wait within ``target``."""
    for c, b in erlang_b_series(rate * mean):
        if c > MAX_SERVERS:
            return None
        waits = _waits(c, b, rate, mean, scv)
        if waits.utilisation < 1 and waits.planned(model)[1] <= target:
            return c
    raise AssertionError("unreachable")  # pragma: no cover


def _by_servers(
    series: list[_Waits], model: str, first: int, kept: set[int]
) -> tuple[ServerPoint, ...]:
    """From ``first`` on, strided to about MAX_POINTS, always with the servers in ``kept``."""
    chosen = series[first - 1 :]
    stride = max(1, math.ceil(len(chosen) / MAX_POINTS))
    points = []
    for i, waits in enumerate(chosen):
        if i % stride and waits.servers not in kept:
            continue
        mean_wait, p95 = waits.planned(model)
        points.append(ServerPoint(waits.servers, waits.utilisation, mean_wait, p95))
    return tuple(points)


def _p95_text(mean_formula: str) -> str:
    return f"t95 ≈ (Wq / C)·ln(C / 0.05) with Wq from {mean_formula} (approximation)"


def plan_capacity(observation: Observation, target_p95_wait_s: float) -> CapacityPlan:
    """The plan for one model: its figures with the servers it has, the servers it needs for
    a p95 queue wait within ``target_p95_wait_s``, and the series over a range of servers."""
    if target_p95_wait_s < 0 or not math.isfinite(target_p95_wait_s):
        raise ValueError(f"the target wait must be finite and not negative: {target_p95_wait_s}")
    obs = observation
    warnings: list[str] = []
    n, window, c = obs.requests, obs.window_seconds, obs.servers
    rate = n / window
    mean, variance = obs.service_mean_s, max(0.0, obs.service_variance_s2)
    figures: dict[str, Figure] = {
        "arrival_rate": Figure(rate, "λ = n / window", "1/s"),
        "service_time_mean": Figure(
            mean if n else None, "E[S] = mean of inference_time_us over the records", "s"
        ),
        "service_time_variance": Figure(
            variance if n else None, "Var[S] = sample variance of inference_time_us", "s²"
        ),
        "measured_mean_wait": Figure(
            obs.measured_mean_wait_s if n else None, "W̄q = mean of queue_time_us", "s"
        ),
        "measured_queue_length": Figure(
            obs.measured_queue_length,
            "L = Σ (each record's queue interval within the window) / window",
        ),
        "little_queue_length": Figure(
            rate * obs.measured_mean_wait_s, "Little's law: L = λ·W̄q (measured W̄q)"
        ),
    }
    dispersion = index_of_dispersion(obs.minute_counts)
    figures["arrival_dispersion"] = Figure(
        dispersion, "D = Var / mean of arrivals per minute (1 for Poisson arrivals)"
    )
    _check_arrivals(dispersion, len(obs.minute_counts), warnings)
    _check_little(obs.measured_queue_length, rate * obs.measured_mean_wait_s, warnings)
    if n == 0 or mean <= 0:
        warnings.append(
            "no requests in the window: nothing to plan from"
            if n == 0
            else "no service time measured (every record spent 0 s on a backend)"
        )
        return CapacityPlan(obs.model, n, c, target_p95_wait_s, None, figures, (), tuple(warnings))
    if n < MIN_SAMPLES:
        warnings.append(
            f"only {n} requests in the window (fewer than {MIN_SAMPLES}): the service-time"
            " mean and variance, and every figure from them, are rough"
        )
    cv = math.sqrt(variance) / mean
    scv = cv * cv
    a = rate * mean
    model = MMC if abs(cv - 1.0) <= CV_TOLERANCE else MGC
    if model == MGC:
        cited = "Pollaczek–Khinchine (exact for M/G/1)" if c == 1 else "Allen–Cunneen (approx.)"
        warnings.append(
            f"service time CV = {cv:.2f}, far from 1 (exponential): the M/M/c figures are off;"
            f" planning uses {cited}"
        )
    mg_mean_formula = (
        "Pollaczek–Khinchine (M/G/1): Wq = λ·E[S²] / (2(1 − ρ))"
        if c == 1
        else "Allen–Cunneen (M/G/c, approximation): Wq ≈ Wq(M/M/c)·(1 + c_s²) / 2"
    )
    figures["service_time_cv"] = Figure(cv, "c_s = √Var[S] / E[S] (1 for exponential)")
    figures["offered_load"] = Figure(a, "a = λ·E[S]", "Erlang")
    needed = _needed(rate, mean, scv, model, target_p95_wait_s)
    stable_from = math.floor(a) + 1
    last = max(2 * (needed or stable_from), stable_from + 1, c)
    series = _series(rate, mean, scv, min(last, stable_from + MAX_SERVERS))
    if c >= 1:
        # With c = 1 the Allen–Cunneen product is Pollaczek–Khinchine's formula exactly.
        here = series[c - 1]
        _server_figures(figures, here, mg_mean_formula, model)
        if here.utilisation >= 1:
            warnings.append(
                f"ρ = {here.utilisation:.3f} ≥ 1: the queue is unstable with {c} servers"
                " (waits grow without bound); the wait figures for them are undefined"
            )
    else:
        warnings.append("no configured backend serves this model (c = 0)")
    figures["servers_needed"] = Figure(
        needed,
        f"smallest c with ρ < 1 and p95 wait ≤ {target_p95_wait_s:g} s ({model})",
        "servers",
    )
    if needed is None:
        warnings.append(f"no number of servers up to {MAX_SERVERS} meets the target")
    return CapacityPlan(
        obs.model, n, c, target_p95_wait_s, model, figures,
        _by_servers(series, model, stable_from, {c, needed or 0}), tuple(warnings),
    )  # fmt: skip


def _server_figures(figures: dict[str, Figure], w: _Waits, mg_formula: str, model: str) -> None:
    figures["utilisation"] = Figure(w.utilisation, "ρ = λ·E[S] / c")
    figures["wait_probability"] = Figure(
        w.wait_probability if w.utilisation < 1 else None,
        "Erlang C: C(c, a) = c·B / (c − a(1 − B)), B(c, a) by the Erlang B recursion",
    )
    figures["mmc_mean_wait"] = Figure(w.mmc_mean, "Erlang C: Wq = C(c, a) / (cμ − λ)", "s")
    figures["mmc_p95_wait"] = Figure(
        w.mmc_p95, "M/M/c: t95 = ln(C / 0.05) / (cμ − λ) if C > 0.05, else 0", "s"
    )
    figures["mg_mean_wait"] = Figure(w.mg_mean, mg_formula, "s")
    figures["mg_p95_wait"] = Figure(w.mg_p95, _p95_text(mg_formula.split(":")[0]), "s")
    mean_wait, p95 = w.planned(model)
    figures["predicted_mean_wait"] = Figure(mean_wait, f"{model}: as {_name(model)}_mean_wait", "s")
    figures["predicted_p95_wait"] = Figure(p95, f"{model}: as {_name(model)}_p95_wait", "s")
    rate_times_wait = math.inf if math.isinf(mean_wait) else mean_wait * _rate_of(figures)
    figures["predicted_queue_length"] = Figure(
        rate_times_wait, "Little's law: Lq = λ·Wq (predicted Wq)"
    )


def _name(model: str) -> str:
    return "mmc" if model == MMC else "mg"


def _rate_of(figures: dict[str, Figure]) -> float:
    return figures["arrival_rate"].value or 0.0


def _check_little(measured: float, little: float, warnings: list[str]) -> None:
    if max(measured, little) < LITTLE_FLOOR:
        return
    gap = abs(measured - little) / max(measured, little)
    if gap > LITTLE_TOLERANCE:
        warnings.append(
            f"Little's law: measured queue length {measured:.3g} against λ·W̄q = {little:.3g}"
            f" ({gap:.0%} apart, over {LITTLE_TOLERANCE:.0%}): the window is not in steady"
            " state (a burst, or waits long against the window); the averages are unreliable"
        )


def _check_arrivals(dispersion: float | None, minutes: int, warnings: list[str]) -> None:
    if dispersion is None or minutes < MIN_DISPERSION_MINUTES:
        return
    # Under Poisson arrivals (k − 1)·D is χ² with k − 1 degrees of freedom: D ≈ 1 ± √(2/(k−1)).
    z = (dispersion - 1.0) / math.sqrt(2.0 / (minutes - 1))
    if abs(z) > DISPERSION_Z:
        kind = "burstier" if dispersion > 1 else "more regular"
        warnings.append(
            f"arrivals are {kind} than Poisson (index of dispersion {dispersion:.2f} over"
            f" {minutes} minutes, {abs(z):.1f} standard errors from 1): the M/·/c figures"
            " assume Poisson arrivals"
        )

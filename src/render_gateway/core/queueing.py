"""Queueing formulas for capacity planning: M/M/c (Erlang B and C), M/G/1 (Pollaczek–Khinchine)
and the Allen–Cunneen approximation for M/G/c. Pure functions of rates and moments in seconds.

Every mean wait here is the wait in the queue (``Wq``: arrival until service starts), not the
time in the system. ``a = λ·E[S]`` is the offered load in Erlangs; a queue with ``c`` servers is
stable only while ``a < c``. Functions that need a stable queue return ``math.inf`` otherwise, so
callers can compare and plan without special cases (they report it as "unstable").
"""

from __future__ import annotations

import math
from collections.abc import Iterator


def erlang_b_series(a: float) -> Iterator[tuple[int, float]]:
    """``(c, B(c, a))`` for c = 1, 2, ...: the Erlang B blocking probability by its recursion
    ``B(c) = a·B(c−1) / (c + a·B(c−1))`` from ``B(0) = 1``, which stays within [0, 1] for any
    load, unlike the factorial form (whose terms overflow past c ≈ 170)."""
    if a < 0 or not math.isfinite(a):
        raise ValueError(f"offered load must be finite and not negative, not {a}")
    b, c = 1.0, 0
    while True:
        c += 1
        b = a * b / (c + a * b)
        yield c, b


def erlang_b(c: int, a: float) -> float:
    """Erlang B: the probability that all ``c`` servers are busy in a loss system (M/M/c/c)."""
    if c < 1:
        raise ValueError(f"servers must be at least 1, not {c}")
    for k, b in erlang_b_series(a):
        if k == c:
            return b
    raise AssertionError("unreachable")  # pragma: no cover


def erlang_c_from_b(c: int, a: float, b: float) -> float:
    """Erlang C from Erlang B: ``C = c·B / (c − a·(1 − B))``; 1 for an unstable queue."""
    if a >= c:
        return 1.0
    return c * b / (c - a * (1.0 - b))


def erlang_c(c: int, a: float) -> float:
    """Erlang C: the probability that an arrival waits (M/M/c), ``C(c, a)``."""
    return erlang_c_from_b(c, a, erlang_b(c, a))


def mmc_mean_wait(c: int, arrival_rate: float, mean_service: float, c_prob: float) -> float:
    """M/M/c mean queue wait ``Wq = C(c, a) / (c·μ − λ)``, from a computed ``C(c, a)``."""
    slack = c / mean_service - arrival_rate
    return math.inf if slack <= 0 else c_prob / slack


def mmc_wait_quantile(
    c: int, arrival_rate: float, mean_service: float, c_prob: float, q: float = 0.95
) -> float:
    """The ``q`` quantile of the M/M/c queue wait: ``P(Wq > t) = C·exp(−(c·μ − λ)·t)``, so
    ``t_q = ln(C / (1 − q)) / (c·μ − λ)`` when ``C > 1 − q``, else 0 (most arrivals never wait)."""
    mean_wait = mmc_mean_wait(c, arrival_rate, mean_service, c_prob)
    return exponential_tail_quantile(c_prob, mean_wait, q)


def exponential_tail_quantile(wait_probability: float, mean_wait: float, q: float) -> float:
    """The ``q`` quantile of a wait that is 0 with probability ``1 − P`` and else exponential
    with mean ``Wq / P`` (exact for M/M/c; the usual approximation for M/G/c)."""
    if math.isinf(mean_wait):
        return math.inf
    tail = 1.0 - q
    if wait_probability <= tail or mean_wait <= 0:
        return 0.0
    return (mean_wait / wait_probability) * math.log(wait_probability / tail)


def pollaczek_khinchine_wait(arrival_rate: float, mean_service: float, variance: float) -> float:
    """M/G/1 mean queue wait (exact): ``Wq = λ·E[S²] / (2·(1 − ρ))``, ``E[S²] = Var + E[S]²``."""
    rho = arrival_rate * mean_service
    if rho >= 1:
        return math.inf
    second_moment = variance + mean_service * mean_service
    return arrival_rate * second_moment / (2.0 * (1.0 - rho))


def allen_cunneen_wait(mmc_wait: float, arrival_scv: float, service_scv: float) -> float:
    """M/G/c (G/G/c) mean queue wait, approximately: the M/M/c wait scaled by
    ``(c_a² + c_s²) / 2`` (Allen–Cunneen); exact for M/M/c and for M/G/1 (it is P-K there)."""
    return mmc_wait * (arrival_scv + service_scv) / 2.0


def index_of_dispersion(counts: tuple[int, ...]) -> float | None:
    """Variance over mean of per-interval arrival counts (1 for a Poisson process); None
    with fewer than two intervals or no arrivals."""
    if len(counts) < 2:
        return None
    mean = sum(counts) / len(counts)
    if mean <= 0:
        return None
    variance = sum((n - mean) ** 2 for n in counts) / (len(counts) - 1)
    return variance / mean

"""Prices per GPU-second by plan and model family (pure; built from the configuration)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PlanPrices:
    per_gpu_second: float
    by_family: Mapping[str, float]


@dataclass(frozen=True)
class PriceTable:
    plans: Mapping[str, PlanPrices]
    currency: str = "USD"
    fallback_plan: str = "default"

    def unit_price(self, plan: str, family: str) -> float:
        """The plan's price for this family, else the plan's base price. A plan the config does
        not know (a key minted before the plan was removed) pays the fallback plan's prices."""
        prices = self.plans.get(plan) or self.plans[self.fallback_plan]
        return prices.by_family.get(family, prices.per_gpu_second)

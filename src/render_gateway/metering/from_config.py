"""Prices and budget limits as the configuration states them."""

from __future__ import annotations

from collections.abc import Callable

from render_gateway.config import GatewayConfig
from render_gateway.core.budgets import BudgetLimit
from render_gateway.core.pricing import PlanPrices, PriceTable
from render_gateway.core.usage_records import NANOS


def price_table(config: GatewayConfig) -> PriceTable:
    plans = {
        name: PlanPrices(plan.price_per_gpu_second, dict(plan.family_prices))
        for name, plan in config.plans.items()
    }
    return PriceTable(plans, config.currency)


def budget_limits(config: GatewayConfig) -> Callable[[str, str], BudgetLimit]:
    """(customer, plan) → the customer's own budget if configured, else their plan's."""

    def limit_for(customer_id: str, plan: str) -> BudgetLimit:
        source = (
            config.budgets.get(customer_id) or config.plans.get(plan) or config.plans["default"]
        )
        cost = source.monthly_cost
        return BudgetLimit(
            source.monthly_gpu_seconds, None if cost is None else round(cost * NANOS)
        )

    return limit_for

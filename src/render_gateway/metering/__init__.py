"""Metering: usage records, pricing, budgets, and the hot path into ClickHouse."""

"""Every store of a gateway in memory: the in-process application tests' configuration."""

from __future__ import annotations

from render_gateway.config import StoresConfig


def memory_stores() -> StoresConfig:
    return StoresConfig(
        jobs="memory://",
        limits="memory://",
        budgets="memory://",
        events="memory://",
        keys="memory://",
        webhooks="memory://",
        leases="memory://",
    )

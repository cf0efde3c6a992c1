"""What every generation request passes before it may queue or run: its route in the catalog,
its fields against the task, an offered format, a serving backend, the caller's rate limit and
their budget. Shared by the async (submit) and sync (run now) use cases."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from render_gateway.application.refusals import RateInfo, RefusalKind, Refused
from render_gateway.auth.principal import Principal
from render_gateway.catalog import (
    Catalog,
    CatalogError,
    CatalogModel,
    FormatNotOffered,
    SizeNotOffered,
)
from render_gateway.config import GatewayConfig, PlanConfig
from render_gateway.core.budgets import BudgetExceeded, Reservation
from render_gateway.generation import MAX_SEED, GenerationRequest, describe_validation_error
from render_gateway.metering.meter import Meter
from render_gateway.metering.work import Work
from render_gateway.scheduling.backend_pool import BackendPool
from render_gateway.scheduling.token_bucket import BucketConfig
from render_gateway.stores.limits import RateLimits, limit_key


class Admission:
    def __init__(
        self,
        config: GatewayConfig,
        catalog: Callable[[], Catalog],  # the catalog follows what backends report they serve
        pool: BackendPool,
        limits: RateLimits,
        meter: Meter,
    ) -> None:
        self._config, self._catalog, self._pool = config, catalog, pool
        self._limits, self._meter = limits, meter

    def plan(self, principal: Principal) -> PlanConfig:
        return self._config.plans.get(principal.plan) or self._config.plans["default"]

    def route(self, modality: str, family: str, model: str, task: str) -> CatalogModel:
        """Catalog lookup (aliases included); not_found naming what exists."""
        try:
            return self._catalog().resolve(modality, family, model, task)
        except CatalogError as exc:
            raise Refused(
                RefusalKind.not_found, "model_not_found", str(exc), {"known": exc.known}
            ) from exc

    @staticmethod
    def generation(task: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The generation fields checked against the task (API.md's rules), with a seed drawn
        here when none was given: the gateway knows the seed that ran (and a retry runs the
        same one) even when the backend does not echo it (a Triton model)."""
        try:
            GenerationRequest.model_validate({**fields, "task": task})
        except ValidationError as exc:
            raise Refused(
                RefusalKind.invalid, "invalid_request", describe_validation_error(exc)
            ) from exc
        if fields.get("seed") is None:
            fields = {**fields, "seed": secrets.randbelow(MAX_SEED + 1)}
        return fields

    @staticmethod
    def format(entry: CatalogModel, task: str, requested: str | None) -> str | None:
        """The format forwarded (CatalogModel.format_for); invalid naming what is offered."""
        try:
            return entry.format_for(task, requested)
        except FormatNotOffered as exc:
            raise Refused(
                RefusalKind.invalid, "format_not_offered", str(exc), {"offered": exc.offered}
            ) from exc

    @staticmethod
    def size(entry: CatalogModel, task: str, width: int, height: int) -> None:
        """An explicit output size (instead of a format): invalid unless the task takes a
        size and the model's backends take this one (CatalogModel.check_size)."""
        try:
            entry.check_size(task, width, height)
        except SizeNotOffered as exc:
            raise Refused(RefusalKind.invalid, "size_not_offered", str(exc), exc.limits) from exc

    def backend(self, family: str, model: str, backend: str | None) -> None:
        if not self._pool.serving(family, model, backend):
            kind = f" of type {backend!r}" if backend else ""
            raise Refused(
                RefusalKind.not_found,
                "backend_not_found",
                f"no backend{kind} serves {family}/{model}",
            )

    def _bucket(self, principal: Principal) -> tuple[str, BucketConfig, PlanConfig]:
        plan = self.plan(principal)
        bucket = BucketConfig(plan.rate_capacity, plan.rate_refill_per_second)
        return limit_key(principal.plan, principal.customer_id), bucket, plan

    async def rate(self, principal: Principal) -> RateInfo:
        """Take a token from the caller's bucket (one atomic step on the limits store);
        too_many when it is empty. The returned state is what the caller is told."""
        key, bucket, plan = self._bucket(principal)
        decision = await self._limits.take(key, bucket)
        if not decision.allowed:
            info = RateInfo.of(
                plan.rate_capacity,
                decision.remaining,
                decision.reset_after_seconds,
                decision.retry_after_seconds,
            )
            raise Refused(
                RefusalKind.too_many, "rate_limited", "too many requests for this plan", rate=info
            )
        return RateInfo.of(
            plan.rate_capacity, decision.remaining, decision.reset_after_seconds, None
        )

    async def refund_rate(self, principal: Principal) -> None:
        """Give the token back for a request that could not be served at all (no capacity):
        being turned away is not using the service."""
        key, bucket, _ = self._bucket(principal)
        await self._limits.refund(key, bucket)

    async def budget(self, key: str, principal: Principal, work: Work, now: float) -> Reservation:
        """Reserve the request's own estimated usage against the customer's monthly budget;
        payment when it does not fit (nothing is queued or run, nothing is held)."""
        try:
            return await self._meter.admit(key, principal.customer_id, principal.plan, work, now)
        except BudgetExceeded as exc:
            details = {"limit": exc.limit, "committed": exc.committed, "requested": exc.asked,
                       "unit": exc.what}  # fmt: skip
            raise Refused(RefusalKind.payment, "budget_exceeded", str(exc), details) from exc

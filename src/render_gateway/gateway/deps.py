"""Request-scoped helpers for routes: the services, the caller, and rate limiting."""

from __future__ import annotations

import math

from fastapi import Request, Response

from render_gateway.auth.principal import AuthError, Principal
from render_gateway.gateway.http import ApiError
from render_gateway.gateway.services import GatewayServices


def services(request: Request) -> GatewayServices:
    found: GatewayServices = request.app.state.services
    return found


async def caller(request: Request) -> Principal:
    """The authenticated caller; every failure is a 401 naming what was wrong."""
    try:
        return await services(request).authenticator.authenticate(
            request.headers.get("authorization")
        )
    except AuthError as exc:
        raise ApiError(
            401, exc.code, exc.message, headers={"WWW-Authenticate": 'Bearer realm="render"'}
        ) from exc


def charge_rate_limit(request: Request, response: Response, principal: Principal) -> None:
    """Take a token from the caller's bucket; set the X-RateLimit headers; 429 when empty."""
    decision = services(request).limiter.take(f"{principal.plan}:{principal.customer_id}")
    plan = (
        services(request).config.plans.get(principal.plan)
        or services(request).config.plans["default"]
    )
    headers = {
        "X-RateLimit-Limit": str(int(plan.rate_capacity)),
        "X-RateLimit-Remaining": str(max(0, math.floor(decision.remaining))),
        "X-RateLimit-Reset": str(math.ceil(decision.reset_after_seconds)),
    }
    if not decision.allowed:
        retry = decision.retry_after_seconds
        headers["Retry-After"] = str(math.ceil(retry)) if math.isfinite(retry) else "3600"
        raise ApiError(429, "rate_limited", "too many requests for this plan", headers=headers)
    response.headers.update(headers)


def is_admin(request: Request, principal: Principal) -> bool:
    """Whether the caller's plan may read and run what is everyone's (usage, reconciliation)."""
    plan = services(request).config.plans.get(principal.plan)
    return plan is not None and plan.admin


def require_admin(request: Request, principal: Principal, refusal: str) -> None:
    if not is_admin(request, principal):
        raise ApiError(403, "forbidden", refusal)

"""Request-scoped helpers for routes: the services, the caller, and rate limiting."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from render_gateway.api.http import ApiError
from render_gateway.application.services import GatewayServices
from render_gateway.auth.principal import AuthError, Principal


def services(request: Request) -> GatewayServices:
    found: GatewayServices = request.app.state.services
    return found


# Declares the scheme in OpenAPI (``securitySchemes`` and each operation's ``security``); the
# header itself is read and judged by the authenticator below.
BEARER = HTTPBearer(
    auto_error=False, scheme_name="bearer", description="an API key (rk_…) or a JWT"
)


async def caller(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
) -> Principal:
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
    decision = services(request).limiter.take(rate_limit_key(principal))
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


def rate_limit_key(principal: Principal) -> tuple[str, str]:
    # A pair, not "plan:customer": a plan named "admin:x" must not read as plan "admin".
    return (principal.plan, principal.customer_id)


def refund_rate_limit(request: Request, principal: Principal) -> None:
    """Give the token back for a request the gateway could not serve at all (503
    ``no_capacity``): being turned away is not using the service."""
    services(request).limiter.refund(rate_limit_key(principal))


def is_admin(request: Request, principal: Principal) -> bool:
    """Whether the caller's plan may read and run what is everyone's (usage, reconciliation)."""
    plan = services(request).config.plans.get(principal.plan)
    return plan is not None and plan.admin


def require_admin(request: Request, principal: Principal, refusal: str) -> None:
    if not is_admin(request, principal):
        raise ApiError(403, "forbidden", refusal)

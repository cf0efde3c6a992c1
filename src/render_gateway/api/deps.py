"""Request-scoped helpers for routes: the services, the caller, and the admin check.

Rate limiting is a use-case step (application/admission.py), not an HTTP concern.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from render_gateway.api.http import ApiError
from render_gateway.api.lean_route import lean_dependency
from render_gateway.application.services import GatewayServices
from render_gateway.auth.principal import AuthError, Principal


def services(request: HTTPConnection) -> GatewayServices:
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
    return await authenticated(request)


@lean_dependency(caller)
async def authenticated(request: Request) -> Principal:
    """``caller``'s work (``_declared`` only documents the scheme); how lean routes solve it."""
    try:
        return await services(request).authenticator.authenticate(
            request.headers.get("authorization")
        )
    except AuthError as exc:
        raise ApiError(
            401, exc.code, exc.message, headers={"WWW-Authenticate": 'Bearer realm="render"'}
        ) from exc


def is_admin(request: HTTPConnection, principal: Principal) -> bool:
    """Whether the caller's plan may read and run what is everyone's (usage, reconciliation)."""
    plan = services(request).config.plans.get(principal.plan)
    return plan is not None and plan.admin


def require_admin(request: Request, principal: Principal, refusal: str) -> None:
    if not is_admin(request, principal):
        raise ApiError(403, "forbidden", refusal)

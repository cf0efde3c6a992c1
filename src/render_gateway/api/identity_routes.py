"""GET /me: who the credential is — what a client (the console) needs to know what to offer."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from render_gateway.api.api_models import ERROR_RESPONSES
from render_gateway.api.deps import caller, is_admin
from render_gateway.auth.principal import Principal

router = APIRouter()


class Identity(BaseModel):
    customer_id: str
    plan: str
    admin: bool = Field(description="whether the plan may read every customer's data")
    method: Literal["api_key", "jwt", "anonymous"] = Field(
        description="how the caller signed in: an API key, a JWT, or anonymous"
    )
    key_id: str | None = Field(default=None, description="the API key's id (never the key)")


@router.get("/me", response_model=Identity, responses=ERROR_RESPONSES, summary="The caller")
async def me(request: Request, principal: Annotated[Principal, Depends(caller)]) -> Identity:
    return Identity(
        customer_id=principal.customer_id,
        plan=principal.plan,
        admin=is_admin(request, principal),
        method=principal.method,
        key_id=principal.key_id,
    )

"""Reconciliation over HTTP, for admins: recent runs, and a run over a window now."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from render_gateway.api.api_models import ERROR_RESPONSES, INSTANT_OR_NULL
from render_gateway.api.deps import caller, require_admin, services
from render_gateway.api.http import ApiError
from render_gateway.audit.reconcile_runs import recent_runs
from render_gateway.auth.principal import Principal
from render_gateway.metering.queries import QueryError, TimeRange
from render_gateway.metering.read_side import UsageStoreError

log = logging.getLogger(__name__)

router = APIRouter()


class ReconcileRequest(BaseModel):
    # Unknown fields are refused, not ignored: the document says so (additionalProperties:
    # false), and a field nobody reads is a caller's mistake.
    model_config = ConfigDict(extra="forbid")

    from_: str | None = Field(
        default=None, alias="from", min_length=1, max_length=40, json_schema_extra=INSTANT_OR_NULL
    )
    to: str | None = Field(
        default=None, min_length=1, max_length=40, json_schema_extra=INSTANT_OR_NULL
    )
    threshold: float | None = Field(default=None, ge=0, le=1)  # default: reconcile.threshold
    repair: bool = False


@router.get("/reconciliations", responses=ERROR_RESPONSES, summary="Recent reconciliation runs")
async def list_runs(
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> dict[str, Any]:
    svc = services(request)
    require_admin(request, principal, "reconciliation is for admins")
    try:
        # The recorded runs live in ClickHouse: read on the read side's own client.
        runs = await asyncio.to_thread(lambda: recent_runs(svc.usage_queries.store(), limit))
    except UsageStoreError as exc:
        # The store's own error names hosts or paths: it goes to the log, not to the caller.
        log.warning("reconciliation runs unavailable: %s", exc)
        raise ApiError(
            503, "usage_unavailable", "the usage store is unavailable; try again shortly",
            headers={"Retry-After": "5"},
        ) from exc  # fmt: skip
    state = svc.reconciler.state
    return {"runs": runs, "last_status": state.last_status, "runs_since_start": state.runs}


@router.post(
    "/reconciliations", responses=ERROR_RESPONSES, summary="Reconcile a window now (admins)"
)
async def run_now(
    body: ReconcileRequest, request: Request, principal: Annotated[Principal, Depends(caller)]
) -> dict[str, Any]:
    """Hot path against cold path over ``[from, to)`` (default: the last closed window); the
    run is recorded like the periodic ones. ``repair`` re-inserts into ClickHouse what only the
    cold path has."""
    svc = services(request)
    require_admin(request, principal, "reconciliation is for admins")
    if body.from_ is None and body.to is None:
        window = svc.reconciler.due_window()
    else:
        try:
            window = TimeRange.parse(body.from_, body.to, datetime.now(UTC))
        except QueryError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from exc
    result = await svc.reconciler.run(window, repair=body.repair, threshold=body.threshold)
    return result.to_json()

"""GET /backends: the configured backends as this replica sees them, for operators (admins).

The live part (health, breaker, slots, counts, node key) is this process's own: each replica
probes and schedules on its own. The hot-path part (the device each backend last ran on, its
latest failures) is everyone's, read from the usage store, or from the replica holding the
embedded one (``GET /backends/activity``, relayed as the usage reads are). A hot-path read that
fails never fails the list: those fields come back empty, with ``usage_unavailable: true``.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from render_gateway.api.api_models import ERROR_RESPONSES
from render_gateway.api.deps import caller, require_admin, services
from render_gateway.api.http import ApiError
from render_gateway.api.usage_routes import relayed, store_unavailable, usage_read_place
from render_gateway.application.services import GatewayServices
from render_gateway.auth.principal import Principal
from render_gateway.inference.kserve_grpc_client import GRPC_SCHEME
from render_gateway.metering.backend_activity import BackendActivity, activity_window
from render_gateway.metering.read_side import UsageStoreError
from render_gateway.scheduling.backend_pool import Backend
from render_gateway.stores.unavailable import StoreUnavailable

log = logging.getLogger(__name__)
router = APIRouter()

REFUSAL = "the backends' state is for admins"


def activity_json(activity: BackendActivity) -> dict[str, Any]:
    return {
        "device_uuid": activity.device_uuid,
        "recent_failures": [
            {"at": f.at.isoformat(), "error_code": f.error_code, "request_id": f.request_id,
             "job_id": f.job_id}
            for f in activity.recent_failures
        ],
    }  # fmt: skip


def wall_time(monotonic_at: float | None) -> str | None:
    """A breaker's monotonic reading as a UTC instant (its clock is ``time.monotonic``)."""
    if monotonic_at is None:
        return None
    at = time.time() - (time.monotonic() - monotonic_at)
    return datetime.fromtimestamp(at, UTC).isoformat()


def backend_json(svc: GatewayServices, backend: Backend) -> dict[str, Any]:
    spec = backend.spec
    breaker = backend.breaker.snapshot()
    return {
        "id": spec.id,
        "family": spec.family,
        "models": list(spec.models),
        "type": spec.type,
        "endpoint": spec.endpoint,
        "protocol": "grpc" if spec.endpoint.startswith(GRPC_SCHEME) else "http",
        "healthy": backend.healthy,
        "breaker": {
            "state": breaker.state.value,
            "failures": breaker.failures,
            "calls": breaker.calls,
            "opened_at": wall_time(breaker.opened_at),
        },
        "in_flight": backend.in_flight,
        "capacity": spec.capacity,
        "served": backend.served,
        "failed": backend.failed,
        "node_key_id": svc.backend_key_ids.get(spec.id),
    }


async def hot_path_activity(svc: GatewayServices, request: Request) -> dict[str, Any] | None:
    """Backend id → its ``activity_json``; None when the hot path cannot be read now."""
    try:
        place = await usage_read_place(svc)
        if not place.here:
            answer = await relayed(svc, place, request, "/backends/activity")
            if answer is not None:
                if answer.status_code != 200:
                    return None
                found: dict[str, Any] = orjson.loads(bytes(answer.body))["backends"]
                return found
        activity = await svc.usage_queries.backend_activity(activity_window(datetime.now(UTC)))
    except (ApiError, StoreUnavailable, UsageStoreError, orjson.JSONDecodeError, KeyError) as exc:
        log.warning("backends' hot-path activity unavailable: %r", exc)
        return None
    return {backend: activity_json(a) for backend, a in activity.items()}


@router.get(
    "/backends",
    response_model=dict[str, Any],
    responses=ERROR_RESPONSES,
    summary="The backends: health, breaker, load, node key, device, recent failures (admins)",
)
async def list_backends(
    request: Request, principal: Annotated[Principal, Depends(caller)]
) -> dict[str, Any]:
    """Health, breaker and counts are this replica's own (since it started); ``device_uuid``
    and ``recent_failures`` (at most 10, newest first) are the last 24 hours' of the hot path,
    across replicas."""
    svc = services(request)
    require_admin(request, principal, REFUSAL)
    activity = await hot_path_activity(svc, request)
    backends = []
    for backend in svc.pool.backends.values():
        item = backend_json(svc, backend)
        seen = (activity or {}).get(backend.spec.id) or activity_json(BackendActivity())
        item.update(device_uuid=seen["device_uuid"], recent_failures=seen["recent_failures"])
        backends.append(item)
    body: dict[str, Any] = {"backends": backends}
    if activity is None:
        body["usage_unavailable"] = True
    return body


@router.get(
    "/backends/activity",
    response_model=dict[str, Any],
    responses=ERROR_RESPONSES,
    summary="What the hot path saw of each backend in the last 24 hours (admins)",
)
async def get_activity(
    request: Request, principal: Annotated[Principal, Depends(caller)]
) -> dict[str, Any] | Response:
    """Backend id → ``device_uuid`` and ``recent_failures``, for every backend any replica ran
    (GET /backends merges it into this replica's list). 503 ``usage_unavailable`` when the
    usage store cannot be read."""
    svc = services(request)
    require_admin(request, principal, REFUSAL)
    window = activity_window(datetime.now(UTC))
    place = await usage_read_place(svc)
    if not place.here and (answer := await relayed(svc, place, request, "/backends/activity")):
        return answer
    try:
        activity = await svc.usage_queries.backend_activity(window)
    except UsageStoreError as exc:
        raise store_unavailable(exc) from exc
    return {
        "since": window.start.isoformat(),
        "backends": {backend: activity_json(a) for backend, a in activity.items()},
    }

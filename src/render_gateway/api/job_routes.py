"""The async tier: submit to the queue, then poll, stream events, fetch the output, cancel."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent

from render_gateway.api.api_models import (
    ERROR_RESPONSES,
    JSON_ERROR_RESPONSES,
    REDIRECT_RESPONSE,
    JobResponse,
    QueuedResponse,
    QueueRequest,
)
from render_gateway.api.asset_routes import admit_asset_inputs
from render_gateway.api.deps import caller, charge_rate_limit, services
from render_gateway.api.event_stream import (
    EVENT_STREAM_RESPONSE,
    LAST_EVENT_ID_PATTERN,
    REBUILT_TERMINAL_ID,
    STREAM_AUTH_RECHECK_SECONDS,
    EventStream,
    until_refused,
)
from render_gateway.api.http import ApiError, request_id_of
from render_gateway.application.job_views import job_view
from render_gateway.application.services import GatewayServices
from render_gateway.auth.principal import AuthError, Principal
from render_gateway.catalog import CatalogError, CatalogModel, FormatNotOffered
from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job, JobStatus
from render_gateway.core.lanes import Lane
from render_gateway.generation import GenerationRequest, describe_validation_error
from render_gateway.metering.budgets import BudgetExceeded, Reservation
from render_gateway.metering.work import Work, work_of
from render_gateway.stores.jobs import CancelResult, IdempotencyConflict
from render_gateway.url_policy import UrlRefused

router = APIRouter()
ROUTING_FIELDS = frozenset(
    {"modality", "family", "model", "task", "format", "backend", "priority", "webhook", "ttl",
     "idempotency_key"}
)  # fmt: skip


def validated_generation(task: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Check the generation fields against the task (API.md's rules); 400 on any mismatch."""
    try:
        GenerationRequest.model_validate({**fields, "task": task})
    except ValidationError as exc:
        raise ApiError(400, "invalid_request", describe_validation_error(exc)) from exc
    return fields


def offered_format(entry: CatalogModel, task: str, requested: str | None) -> str | None:
    """The format forwarded for the request (see CatalogModel.format_for); 400 naming what is
    offered when the model's backends cannot serve the one asked for."""
    try:
        return entry.format_for(task, requested)
    except FormatNotOffered as exc:
        raise ApiError(400, "format_not_offered", str(exc), {"offered": exc.offered}) from exc


def resolve_route(
    svc: GatewayServices, modality: str, family: str, model: str, task: str
) -> CatalogModel:
    """Catalog lookup (aliases included); 404 naming what exists."""
    try:
        return svc.catalog.resolve(modality, family, model, task)
    except CatalogError as exc:
        raise ApiError(404, "model_not_found", str(exc), {"known": exc.known}) from exc


def require_backend(svc: GatewayServices, family: str, model: str, backend: str | None) -> None:
    if not svc.pool.serving(family, model, backend):
        kind = f" of type {backend!r}" if backend else ""
        raise ApiError(404, "backend_not_found", f"no backend{kind} serves {family}/{model}")


async def require_webhook_allowed(svc: GatewayServices, url: str) -> None:
    """400 naming the field for a webhook the sender would refuse (OPERATIONS.md, webhooks)."""
    try:
        await svc.webhooks.check(url)
    except UrlRefused as exc:
        raise ApiError(400, "invalid_request", f"webhook: {exc}", {"field": "webhook"}) from None


def admit_budget(
    svc: GatewayServices, key: str, principal: Principal, work: Work, now: float
) -> Reservation:
    """Reserve the request's own estimated usage against the customer's monthly budget: 402
    when it does not fit (nothing is queued or run, nothing is held)."""
    try:
        return svc.meter.admit(key, principal.customer_id, principal.plan, work, now)
    except BudgetExceeded as exc:
        details = {"limit": exc.limit, "committed": exc.committed, "requested": exc.asked,
                   "unit": exc.what}  # fmt: skip
        raise ApiError(402, "budget_exceeded", str(exc), details) from exc


def eta_seconds(svc: GatewayServices, job: Job, position: int | None) -> float | None:
    if position is None:
        return None
    family, model = job.request["family"], job.request["model"]
    mean = svc.runner.service_times.mean(family, model)
    capacity = sum(
        b.spec.capacity for b in svc.pool.serving(family, model, job.request.get("backend"))
    )
    if mean is None or capacity == 0:
        return None
    return round(mean * (position + 1) / capacity, 3)


def job_body(svc: GatewayServices, job: Job) -> dict[str, Any]:
    position = svc.store.position(job.id) if job.status is JobStatus.queued else None
    progress, _ = svc.events.progress(job.id)
    return job_view(
        job, position, progress, eta_seconds(svc, job, position), asset_url=svc.asset_urls.url
    )


async def owned_job(svc: GatewayServices, job_id: str, principal: Principal) -> Job:
    job = await svc.store.get(job_id) if job_id.startswith("j_") and len(job_id) <= 64 else None
    if job is None or job.customer_id != principal.customer_id:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}")  # others' jobs look absent
    return job


@router.post(
    "/queue",
    status_code=202,
    response_model=QueuedResponse,
    responses=ERROR_RESPONSES,
    summary="Queue a generation (async tier)",
)
async def submit(
    body: QueueRequest,
    request: Request,
    response: Response,
    principal: Annotated[Principal, Depends(caller)],
) -> dict[str, Any]:
    svc = services(request)
    entry = resolve_route(svc, body.modality, body.family, body.model, body.task)
    family, model = entry.family, entry.model
    generation = await admit_asset_inputs(
        request,
        principal,
        validated_generation(
            body.task, body.model_dump(exclude_none=True, exclude=set(ROUTING_FIELDS))
        ),
    )
    format_name = offered_format(entry, body.task, body.format)
    require_backend(svc, family, model, body.backend)
    if body.webhook is not None:
        await require_webhook_allowed(svc, body.webhook)
    plan = svc.config.plans.get(principal.plan) or svc.config.plans["default"]
    if body.priority == "high" and not plan.allow_high_priority:
        raise ApiError(
            403, "priority_not_allowed", f"plan {principal.plan!r} cannot use priority 'high'"
        )
    charge_rate_limit(request, response, principal)
    if svc.store.queued_for(principal.customer_id) >= plan.max_queued_jobs:
        quota = f"at most {plan.max_queued_jobs} queued jobs per customer"
        raise ApiError(429, "queue_quota", quota, headers={"Retry-After": "5"})
    if sum(svc.store.depth().values()) >= svc.config.max_queued_jobs:
        raise ApiError(429, "queue_full", "the queue is full", headers={"Retry-After": "5"})
    routing = {
        "modality": body.modality,
        "family": family,
        "model": model,
        "task": body.task,
        "format": format_name,
        "backend": body.backend,
        "generation": generation,
    }
    now = time.time()
    digest = hashlib.sha256(
        orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    job_id = new_job_id()
    work = work_of(body.modality, family, model, body.task, routing["format"], generation)
    reservation = admit_budget(svc, job_id, principal, work, now)
    job = Job(
        id=job_id,
        customer_id=principal.customer_id,
        lane=Lane.parse(body.priority),
        request=routing,
        created_at=now,
        idempotency_key=body.idempotency_key,
        request_digest=digest,
        expires_at=now + body.ttl if body.ttl else None,
        webhook=body.webhook,
        extra={
            "request_id": request_id_of(request),
            "plan": principal.plan,
            "reservation": {
                "gpu_seconds": reservation.amount.gpu_seconds,
                "cost_nanos": reservation.amount.cost_nanos,
                "month": reservation.month,
                "work": work.to_dict(),
            },
        },
    )
    try:
        stored, created = await svc.store.submit(job)
    except IdempotencyConflict as exc:
        svc.meter.settled(job_id, None)
        raise ApiError(409, "idempotency_conflict", str(exc), {"job_id": exc.existing.id}) from exc
    except BaseException:
        svc.meter.settled(job_id, None)
        raise
    if not created:  # the same request again: the first job holds the reservation
        svc.meter.settled(job_id, None)
    svc.runner.wake()
    position = svc.store.position(stored.id)
    response.headers["Location"] = f"/jobs/{stored.id}"
    return {
        "id": stored.id,
        "status": stored.status.value,
        "position": position,
        "eta_seconds": eta_seconds(svc, stored, position),
        "events_url": f"/jobs/{stored.id}/events",
    }


@router.get(
    "/jobs/{job_id}", response_model=JobResponse, responses=ERROR_RESPONSES, summary="A job's state"
)
async def get_job(
    job_id: str, request: Request, principal: Annotated[Principal, Depends(caller)]
) -> dict[str, Any]:
    svc = services(request)
    return job_body(svc, await owned_job(svc, job_id, principal))


@router.delete("/jobs/{job_id}", status_code=204, responses=ERROR_RESPONSES, summary="Cancel a job")
async def cancel_job(
    job_id: str, request: Request, principal: Annotated[Principal, Depends(caller)]
) -> Response:
    svc = services(request)
    result = await svc.store.cancel(job_id, principal.customer_id, time.time())
    if result is CancelResult.not_found:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}")
    if result is CancelResult.terminal:
        raise ApiError(409, "job_finished", f"job {job_id} has already finished")
    if result is CancelResult.cancelled:
        svc.events.publish(
            job_id, "error", {"code": "cancelled", "message": "the job was cancelled"}
        )
        if (cancelled := await svc.store.get(job_id)) is not None:
            svc.notify_settled(cancelled)
    else:  # running: abort the backend call; the runner settles the job as cancelled
        svc.runner.cancel(job_id)
    return Response(status_code=204)


@router.get(
    "/jobs/{job_id}/output",
    status_code=303,
    response_class=RedirectResponse,
    responses={**REDIRECT_RESPONSE, **ERROR_RESPONSES},
    summary="Redirect to the output",
)
async def job_output(
    job_id: str, request: Request, principal: Annotated[Principal, Depends(caller)]
) -> Response:
    svc = services(request)
    job = await owned_job(svc, job_id, principal)
    if job.status is not JobStatus.complete or not job.outputs:
        raise ApiError(409, "not_complete", f"job {job_id} is {job.status.value}")
    # A signed URL: the client (or a browser it hands the URL to) follows it without credentials.
    return RedirectResponse(svc.asset_urls.url(job.outputs[0]), status_code=303)


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventStream,
    responses={**EVENT_STREAM_RESPONSE, **JSON_ERROR_RESPONSES},
    summary="Server-Sent Events of a job",
)
async def job_events(
    job_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    last_event_id: Annotated[
        str,
        Header(
            alias="Last-Event-ID",
            pattern=LAST_EVENT_ID_PATTERN,
            description="the id of the last event received: the stream resumes after it",
        ),
    ] = "0",
) -> EventSourceResponse:
    svc = services(request)
    job = await owned_job(svc, job_id, principal)
    after = int(last_event_id)  # the pattern keeps it to 18 digits
    credentials = request.headers.get("authorization")

    async def stream() -> AsyncIterator[ServerSentEvent]:
        current = job
        last_position: int | None = None
        # While queued (and nothing has happened yet), report position changes.
        while current.status is JobStatus.queued and not svc.events.has_log(job_id):
            position = svc.store.position(job_id)
            if position != last_position:
                data = {"position": position, "eta_seconds": eta_seconds(svc, current, position)}
                yield ServerSentEvent(orjson.dumps(data).decode(), event="position")
                last_position = position
            await asyncio.sleep(0.25)
            current = await svc.store.get(job_id) or current
        if not svc.events.has_log(job_id):
            # A job that ended before this process knew of it (e.g. before a restart).
            if after >= REBUILT_TERMINAL_ID:
                return  # the client has had it
            for name, data in _terminal_event(svc, current):
                yield ServerSentEvent(
                    orjson.dumps(data).decode(), event=name, id=str(REBUILT_TERMINAL_ID)
                )
            return
        async for item in svc.events.follow(job_id, after):
            yield ServerSentEvent(
                orjson.dumps(item.data).decode(), event=item.event, id=str(item.id)
            )

    async def still_allowed() -> bool:
        try:
            now = await svc.authenticator.authenticate(credentials)
        except AuthError:
            return False
        return now.customer_id == principal.customer_id

    return EventStream(until_refused(stream(), still_allowed, STREAM_AUTH_RECHECK_SECONDS), ping=15)


def _terminal_event(svc: GatewayServices, job: Job) -> list[tuple[str, dict[str, Any]]]:
    if job.status is JobStatus.complete:
        urls = [svc.asset_urls.url(a) for a in job.outputs]
        return [("complete", {"output": urls[0] if urls else None, "outputs": urls})]
    if job.error is not None:
        return [("error", {"code": job.error.code, "message": job.error.message})]
    if job.status is JobStatus.cancelled:
        return [("error", {"code": "cancelled", "message": "the job was cancelled"})]
    return []

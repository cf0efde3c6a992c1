"""The async tier: submit to the queue, then poll, stream events, fetch the output, cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import RedirectResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import HTTPConnection

from render_gateway.api.api_models import (
    ERROR_RESPONSES,
    JSON_ERROR_RESPONSES,
    REDIRECT_RESPONSE,
    CancelRecorded,
    JobResponse,
    QueueBody,
    QueuedResponse,
    QueueRequest,
)
from render_gateway.api.asset_routes import admit_asset_inputs
from render_gateway.api.deps import caller, services
from render_gateway.api.event_stream import (
    EVENT_STREAM_RESPONSE,
    LAST_EVENT_ID_PATTERN,
    STREAM_AUTH_RECHECK_SECONDS,
    EventStream,
    until_refused,
)
from render_gateway.api.http import json_response, rate_headers, request_id_of
from render_gateway.api.lean_route import LeanRoute, lean
from render_gateway.api.preferences import CANCEL_AFTER_PATTERN, parse_duration, parse_prefer
from render_gateway.application.job_cases import CancelOutcome, SubmitRequest, Submitted
from render_gateway.application.job_watch import watch
from render_gateway.application.refusals import RefusalKind, Refused
from render_gateway.auth.principal import AuthError, Principal

router = APIRouter(route_class=LeanRoute)
ROUTING_FIELDS = frozenset(
    {"modality", "family", "model", "task", "format", "backend", "priority", "webhook", "ttl",
     "idempotency_key", "start_deadline", "webhook_events_filter"}
)  # fmt: skip
PREFER_HEADER = Header(
    description="RFC 7240. `wait=N` (N ≤ 60; bare `wait`: 60): answer 200 with the ended job if "
    "it ends within N seconds, else 202 as without it. Others are ignored."
)
CANCEL_AFTER_HEADER = Header(
    alias="Cancel-After",
    max_length=32,
    pattern=CANCEL_AFTER_PATTERN,
    description="a duration (`90`, `90s`, `5m`, `1h30m`; clamped to 1 s – 24 h): a job not "
    "started by then ends cancelled as deadline_exceeded, unbilled (the body's start_deadline)",
)


def queued_body(submitted: Submitted, response: Response) -> dict[str, Any]:
    """The 202 answer of a queued job (``POST /queue``, a sync route asked to respond-async)."""
    stored = submitted.job
    response.headers.update(rate_headers(submitted.rate))
    response.headers["Location"] = f"/jobs/{stored.id}"
    return {
        "id": stored.id,
        "status": stored.status.value,
        "position": submitted.position,
        "eta_seconds": submitted.eta_seconds,
        "events_url": f"/jobs/{stored.id}/events",
    }


def start_deadline(body_seconds: float | None, cancel_after: str | None) -> float | None:
    """The earlier of the body's ``start_deadline`` and the ``Cancel-After`` header."""
    deadlines = [] if body_seconds is None else [body_seconds]
    if cancel_after is not None:
        try:
            deadlines.append(parse_duration(cancel_after))
        except ValueError as exc:
            raise Refused(
                RefusalKind.invalid, "invalid_request", str(exc), {"header": "Cancel-After"}
            ) from None
    return min(deadlines, default=None)


async def submit_queue_body(
    connection: HTTPConnection,
    principal: Principal,
    body: QueueBody,
    request_id: str,
    cancel_after: str | None = None,
) -> Submitted:
    """POST /queue's admission of a validated body (``GET /ws``'s generate messages too);
    ``cancel_after``: the request's ``Cancel-After`` header, if any."""
    cases = services(connection).job_cases
    deadline = start_deadline(body.start_deadline, cancel_after)
    generation = await admit_asset_inputs(
        connection, principal, body.model_dump(exclude_none=True, exclude=set(ROUTING_FIELDS))
    )
    return await cases.submit(
        SubmitRequest(
            modality=body.modality,
            family=body.family,
            model=body.model,
            task=body.task,
            format=body.format,
            backend=body.backend,
            priority=body.priority,
            webhook=body.webhook,
            ttl=body.ttl,
            idempotency_key=body.idempotency_key,
            generation=generation,
            digest_source={**body.model_dump(mode="json"), "start_deadline": deadline},
            start_deadline=deadline,
            webhook_events=(
                None if body.webhook_events_filter is None else tuple(body.webhook_events_filter)
            ),
        ),
        principal,
        request_id,
    )


@router.post(
    "/queue",
    status_code=202,
    response_model=QueuedResponse,
    responses={
        200: {
            "model": JobResponse,
            "description": "with `Prefer: wait=N`: the job ended within N seconds (any end: "
            "complete, error, cancelled)",
        },
        **ERROR_RESPONSES,
    },
    summary="Queue a generation (async tier)",
)
@lean
async def submit(
    body: QueueRequest,
    request: Request,
    response: Response,
    principal: Annotated[Principal, Depends(caller)],
    prefer: Annotated[list[str] | None, PREFER_HEADER] = None,
    cancel_after: Annotated[str, CANCEL_AFTER_HEADER] = "",  # "": none given
) -> Any:
    preferences = parse_prefer(prefer or [])
    submitted = await submit_queue_body(
        request, principal, body, request_id_of(request), cancel_after or None
    )
    answer = queued_body(submitted, response)
    # Answered as built (orjson), not through response_model: the model documents the
    # shape, and FastAPI's re-validation of every answer cost more than the rest of its
    # serialising (docs/BENCHMARKS.md, issue 16); the schemathesis suite checks the shape.
    if preferences.wait_seconds is None:
        return json_response(answer, 202, _headers_of(response))
    # respond-async means nothing on the async tier: only the wait is applied here.
    response.headers["Preference-Applied"] = f"wait={preferences.wait_seconds}"
    cases = services(request).job_cases
    ended = await cases.wait_for_end(submitted.job, preferences.wait_seconds)
    if not ended.status.terminal:
        return json_response(answer, 202, _headers_of(response))
    return json_response(await cases.view(ended), 200, _headers_of(response))


def _headers_of(response: Response) -> dict[str, str]:
    """The headers set on FastAPI's injected response, for a response built here."""
    return {k: v for k, v in response.headers.items() if k.lower() != "content-length"}


@router.get(
    "/jobs/{job_id}", response_model=JobResponse, responses=ERROR_RESPONSES, summary="A job's state"
)
@lean
async def get_job(
    job_id: str, request: Request, principal: Annotated[Principal, Depends(caller)]
) -> Response:
    cases = services(request).job_cases
    # As built, not re-validated through response_model (see submit).
    return json_response(await cases.view(await cases.owned(job_id, principal)))


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    responses={
        202: {
            "model": CancelRecorded,
            "description": "the job is running but no run answered the cancel (its process may "
            "have died): the cancel is recorded and the job ends cancelled when its run is "
            "recovered, instead of running again",
        },
        **ERROR_RESPONSES,
    },
    summary="Cancel a job",
)
@lean
async def cancel_job(
    job_id: str, request: Request, principal: Annotated[Principal, Depends(caller)]
) -> Response:
    outcome = await services(request).job_cases.cancel(job_id, principal)
    if outcome is CancelOutcome.recorded:
        # Running, but no run answered: the cancel is on the job (it ends cancelled when its
        # run is recovered, instead of running again); the DELETE is accepted, not done.
        return json_response({"id": job_id, "status": "running", "cancel": "recorded"}, 202)
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
    cases = services(request).job_cases
    job = await cases.owned(job_id, principal)
    # A signed URL: the client (or a browser it hands the URL to) follows it without credentials.
    return RedirectResponse(cases.output_url(job), status_code=303)


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
    cases = svc.job_cases
    job = await cases.owned(job_id, principal)
    after = int(last_event_id)  # the pattern keeps it to 18 digits
    credentials = request.headers.get("authorization")

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for item in watch(cases, job, after):
            event_id = None if item.id is None else str(item.id)  # position events have none
            yield ServerSentEvent(orjson.dumps(item.data).decode(), event=item.event, id=event_id)

    async def still_allowed() -> bool:
        try:
            now = await svc.authenticator.authenticate(credentials)
        except AuthError:
            return False
        return now.customer_id == principal.customer_id

    return EventStream(until_refused(stream(), still_allowed, STREAM_AUTH_RECHECK_SECONDS), ping=15)

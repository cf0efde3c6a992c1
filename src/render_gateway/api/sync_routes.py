"""The sync tier: run now and answer with the bytes, or 503 when no backend has a free slot."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from render_gateway.api.api_models import (
    ERROR_RESPONSES,
    FORMAT_DESCRIPTION,
    FORMAT_FOR_MODALITY,
    QueuedResponse,
)
from render_gateway.api.asset_routes import admit_asset_inputs
from render_gateway.api.deps import caller, services
from render_gateway.api.http import json_response, rate_headers, request_id_of
from render_gateway.api.job_routes import queued_body
from render_gateway.api.lean_route import LeanRoute, lean
from render_gateway.api.preferences import parse_prefer
from render_gateway.application.job_cases import SubmitRequest
from render_gateway.application.sync_run import SyncRequest
from render_gateway.auth.principal import Principal
from render_gateway.generation import TASK_FIELDS, TASK_MODALITY, GenerationFields, Task

router = APIRouter(route_class=LeanRoute)

BYTES_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the first output's bytes",
        "content": {"image/png": {}, "video/mp4": {}},
    },
    202: {
        "model": QueuedResponse,
        "description": "with `Prefer: respond-async`: queued instead, as POST /queue answers",
    },
    **ERROR_RESPONSES,
}
PREFER_HEADER = Header(
    description="RFC 7240. `respond-async`: queue the request (202, as POST /queue) instead of "
    "running it now. Others are ignored."
)


async def watch_disconnect(request: Request, gone: asyncio.Event) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _run_now(
    modality: str,
    family: str,
    model: str,
    task: Task,
    body: GenerationFields,
    request: Request,
    response: Response,
    principal: Principal,
    format_name: str | None,
    backend: str | None,
    respond_async: bool = False,
) -> Response:
    generation = await admit_asset_inputs(request, principal, body.model_dump(exclude_none=True))
    if respond_async:
        return await _queue_instead(
            SubmitRequest(
                modality=modality, family=family, model=model, task=task, format=format_name,
                backend=backend, priority="normal", webhook=None, ttl=None, idempotency_key=None,
                generation=generation,
                digest_source={"modality": modality, "family": family, "model": model,
                               "task": task, "format": format_name, "backend": backend,
                               **body.model_dump(mode="json")},
            ),
            request, principal,
        )  # fmt: skip
    gone = asyncio.Event()  # a client that hangs up cancels the run (and frees the slot)
    watcher = asyncio.create_task(watch_disconnect(request, gone))
    try:
        result = await services(request).run_now.run(
            SyncRequest(modality, family, model, task, format_name, backend, generation),
            principal,
            request_id_of(request),
            gone,
        )
    finally:
        watcher.cancel()
    if result.client_gone:
        return Response(status_code=499)  # nobody is listening; the status is for the log
    headers = {
        **rate_headers(result.rate),
        "Content-Location": result.asset_url,
        "X-Duration-Ms": str(round(result.seconds * 1000)),
        **dict(response.headers),
    }
    if result.seed is not None:
        headers["X-Seed"] = str(result.seed)
    if result.gpu_seconds is not None:
        headers["X-GPU-Seconds"] = f"{result.gpu_seconds:.6f}"
        headers["X-Metered"] = "true" if result.metered else "false"
    headers.pop("content-length", None)
    return Response(result.data, media_type=result.content_type, headers=headers)


async def _queue_instead(body: SubmitRequest, request: Request, principal: Principal) -> Response:
    """``Prefer: respond-async``: the same request as a queued job, answered as POST /queue."""
    submitted = await services(request).job_cases.submit(body, principal, request_id_of(request))
    response = Response()
    answer = queued_body(submitted, response)
    headers = {**dict(response.headers), "Preference-Applied": "respond-async"}
    headers.pop("content-length", None)
    return json_response(answer, 202, headers)


def _add_sync_route(modality: str, task: Task, fields: type[GenerationFields]) -> None:
    """POST /{modality}/{family}/{model}/{task}: one route per task, so the document gives each
    task its own body (the inputs it needs and takes); one implementation, _run_now."""

    async def run_now(
        family: str,
        model: str,
        body: GenerationFields,
        request: Request,
        response: Response,
        principal: Annotated[Principal, Depends(caller)],
        format: Annotated[str | None, Query(max_length=32)] = None,
        backend: Annotated[str | None, Query(max_length=64)] = None,
        prefer: Annotated[list[str] | None, PREFER_HEADER] = None,
    ) -> Response:
        return await _run_now(
            modality, family, model, task, body, request, response, principal, format, backend,
            respond_async=parse_prefer(prefer or []).respond_async,
        )  # fmt: skip

    lean(run_now)  # the sync tier's hot path (api/lean_route.py)
    run_now.__name__ = f"{modality}_{task}_now"
    # The task's own body model and its modality's formats (set per route).
    run_now.__annotations__["body"] = fields
    run_now.__annotations__["format"] = Annotated[
        FORMAT_FOR_MODALITY[modality] | None, Query(description=FORMAT_DESCRIPTION)
    ]
    router.post(
        f"/{modality}/{{family}}/{{model}}/{task}",
        responses=BYTES_RESPONSE,
        response_class=Response,
        summary=f"{task}: {'an image' if modality == 'image' else 'a video'} now (sync tier)",
    )(run_now)


for _task, _fields in TASK_FIELDS.items():
    _add_sync_route(TASK_MODALITY[_task], _task, _fields)

"""The sync tier: run now and answer with the bytes, or 503 when no backend has a free slot."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from render_gateway.api.api_models import (
    ERROR_RESPONSES,
    FORMAT_DESCRIPTION,
    FORMAT_FOR_MODALITY,
)
from render_gateway.api.asset_routes import admit_asset_inputs
from render_gateway.api.deps import caller, services
from render_gateway.api.http import rate_headers, request_id_of
from render_gateway.application.sync_run import SyncRequest
from render_gateway.auth.principal import Principal
from render_gateway.generation import TASK_FIELDS, TASK_MODALITY, GenerationFields, Task

router = APIRouter()

BYTES_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the first output's bytes",
        "content": {"image/png": {}, "video/mp4": {}},
    },
    **ERROR_RESPONSES,
}


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
) -> Response:
    generation = await admit_asset_inputs(request, principal, body.model_dump(exclude_none=True))
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
    ) -> Response:
        return await _run_now(
            modality, family, model, task, body, request, response, principal, format, backend
        )

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

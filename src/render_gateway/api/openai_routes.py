"""OpenAI-compatible routes: ``GET /v1/models`` and ``POST /v1/images/generations``.

The same use cases, auth, rate limits, budgets and billing as the native routes — a generation
is the sync tier's ``RunNow`` — with OpenAI's shapes (openai_shapes.py); their errors are in
OpenAI's shape too (http.error_response, for every path under ``/v1/``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from render_gateway.api.deps import caller, services
from render_gateway.api.http import ApiError, json_response, rate_headers, request_id_of
from render_gateway.api.lean_route import LeanRoute, lean
from render_gateway.api.openai_shapes import (
    EditForm,
    FormUnreadable,
    ImageEditFields,
    ImageGenerationBody,
    OpenAIErrorBody,
    OpenAIImagesResponse,
    OpenAIModel,
    OpenAIModelList,
    completed_events,
    edit_request,
    error_event,
    generation_request,
    images_response,
    model_entry,
    model_id,
    model_list,
    partial_image_event,
    read_edit_form,
)
from render_gateway.api.sync_routes import watch_disconnect
from render_gateway.application.refusals import Refused
from render_gateway.application.sync_run import SyncRequest, SyncResult
from render_gateway.auth.principal import Principal
from render_gateway.catalog import RUNNABLE
from render_gateway.inference.backend import Progress

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"], route_class=LeanRoute)

# OpenAI's ``created`` of a model: when this gateway began offering it (its start).
LISTED_SINCE = int(time.time())

OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorBody, "description": description}
    for status, description in (
        (400, "invalid request (OpenAI's error shape)"),
        (401, "missing or bad credentials"),
        (402, "over the monthly budget"),
        (404, "unknown model"),
        (413, "body too large"),
        (429, "rate limit reached"),
        (502, "the backend failed"),
        (503, "no capacity"),
    )
}


@router.get(
    "/models", response_model=OpenAIModelList, responses=OPENAI_ERRORS, summary="Models (OpenAI)"
)
async def list_models(
    request: Request, _principal: Annotated[Principal, Depends(caller)]
) -> dict[str, Any]:
    return model_list(services(request).catalog.models, LISTED_SINCE)


@router.get(
    "/models/{model:path}",
    response_model=OpenAIModel,
    responses=OPENAI_ERRORS,
    summary="One model (OpenAI)",
)
async def retrieve_model(
    model: str, request: Request, _principal: Annotated[Principal, Depends(caller)]
) -> dict[str, Any]:
    for entry in services(request).catalog.models:
        if model in (model_id(entry), *entry.aliases) and entry.status in RUNNABLE:
            return model_entry(entry, LISTED_SINCE)
    raise ApiError(404, "model_not_found", f"no model {model!r}; see GET /v1/models")


IMAGES_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the images; with `stream: true`, `image_generation.completed` events",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **OPENAI_ERRORS,
}


@router.post(
    "/images/generations",
    response_model=OpenAIImagesResponse,
    responses=IMAGES_ANSWER,
    summary="Create images (OpenAI), run now on the sync tier",
)
@lean
async def create_images(
    body: ImageGenerationBody,
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
) -> Response:
    return await _run(generation_request(body), body, request, principal)


_IMAGE_PART = {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP"}
_TEXT = {"type": "string"}
EDIT_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "prompt", "image"],
    "properties": {
        # ``image[]`` (what the openai client sends for a list) is read as ``image``: one image
        # in all, so the document names only ``image`` (a form holding both is a 400).
        "image": {**_IMAGE_PART, "description": "PNG, JPEG or WebP; `image[]` is read as image"},
        "mask": {**_IMAGE_PART, "description": "with a mask: task edit; without: i2i"},
        "model": {**_TEXT, "minLength": 1, "maxLength": 200},
        "prompt": {**_TEXT, "minLength": 1, "maxLength": 4000},
        "n": {"type": "integer", "minimum": 1, "maximum": 4},
        "size": {**_TEXT, "pattern": r"^(auto|[0-9]{1,5}x[0-9]{1,5})$"},
        "response_format": {"enum": ["url", "b64_json"]},
        "stream": {"type": "boolean"},
        "partial_images": {"type": "integer", "minimum": 0, "maximum": 3},
        "output_format": {"enum": ["png"]},
        "background": {"enum": ["auto", "opaque"]},
        "quality": {"enum": ["auto", "standard", "hd", "low", "medium", "high"]},
        "input_fidelity": {"enum": ["low", "high"]},
        "user": {**_TEXT, "maxLength": 256},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    },
    "additionalProperties": False,
}


def _edit_of(form: EditForm) -> tuple[SyncRequest, ImageEditFields]:
    try:
        fields = ImageEditFields.model_validate(form.fields)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        message = "; ".join(f"{p['field'] or 'body'}: {p['message']}" for p in problems)
        raise ApiError(400, "invalid_request", message, {"problems": problems}) from exc
    return edit_request(fields, form.files), fields


@router.post(
    "/images/edits",
    response_model=OpenAIImagesResponse,
    responses=IMAGES_ANSWER,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": EDIT_FORM_SCHEMA}},
        }
    },
    summary="Edit an image (OpenAI): edit with a mask, i2i without, on the sync tier",
)
async def edit_images(
    request: Request, principal: Annotated[Principal, Depends(caller)]
) -> Response:
    try:
        sync_request, fields = _edit_of(
            read_edit_form(request.headers.get("content-type", ""), await request.body())
        )
    except FormUnreadable as exc:
        details = {"field": exc.param} if exc.param else {}
        raise ApiError(400, "invalid_request", str(exc), details) from exc
    return await _run(sync_request, fields, request, principal)


async def _run(
    sync_request: SyncRequest,
    fields: ImageGenerationBody | ImageEditFields,
    request: Request,
    principal: Principal,
) -> Response:
    """Run on the sync tier (``RunNow``) and answer in OpenAI's ``ImagesResponse``, or with
    ``stream``, its events: with ``partial_images``, each intermediate image the backend sends
    as it comes (``image_generation.partial_image``), then ``image_generation.completed`` per
    image. A refusal before the first event is still a JSON error; after it (the 200 is sent)
    it is the stream's ``error`` event."""
    gone = asyncio.Event()  # a client that hangs up cancels the run (and frees the slot)
    watcher = asyncio.create_task(watch_disconnect(request, gone))
    previews: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_preview(image: bytes, _progress: Progress) -> None:
        previews.put_nowait(image)

    wants_previews = bool(fields.stream and fields.partial_images)
    run_now = services(request).run_now.run(
        sync_request, principal, request_id_of(request), gone,
        on_preview if wants_previews else None,
    )  # fmt: skip
    run = asyncio.create_task(run_now)
    if wants_previews:
        first = asyncio.create_task(previews.get())
        await asyncio.wait({run, first}, return_when=asyncio.FIRST_COMPLETED)
        if not run.done():  # a preview came first: the answer streams from here on
            stream = _stream_previews(first.result(), previews, run, gone, watcher, fields)
            return StreamingResponse(
                stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        if first.done():
            previews.put_nowait(first.result())  # came with the end: sent before completed
        first.cancel()
    try:
        result = await run
    finally:
        watcher.cancel()
    if result.client_gone:
        return Response(status_code=499)  # nobody is listening; the status is for the log
    headers = {**rate_headers(result.rate), "X-Duration-Ms": str(round(result.seconds * 1000))}
    if result.seed is not None:
        headers["X-Seed"] = str(result.seed)
    if result.gpu_seconds is not None:
        headers["X-GPU-Seconds"] = f"{result.gpu_seconds:.6f}"
        headers["X-Metered"] = "true" if result.metered else "false"
    if fields.stream:
        created = int(time.time())
        early = [_partial(image, i, created, fields) for i, image in enumerate(_drain(previews))]
        events = completed_events(result, created, fields.model_dump(), fields.size)
        headers["Cache-Control"] = "no-cache"
        return Response(b"".join(early) + events, media_type="text/event-stream", headers=headers)
    answer = images_response(
        result, int(time.time()), fields.response_format, str(request.base_url), fields.size
    )
    return json_response(answer, headers=headers)


def _drain(queue: asyncio.Queue[bytes]) -> list[bytes]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def _partial(image: bytes, index: int, created: int, fields: Any) -> bytes:
    return partial_image_event(image, index, created, fields.model_dump(), fields.size)


async def _stream_previews(
    first: bytes,
    previews: asyncio.Queue[bytes],
    run: asyncio.Task[SyncResult],
    gone: asyncio.Event,
    watcher: asyncio.Task[None],
    fields: ImageGenerationBody | ImageEditFields,
) -> AsyncIterator[bytes]:
    """The partial images as they come, then the completed images (or the error)."""
    try:
        yield _partial(first, 0, int(time.time()), fields)
        index = 1
        while not run.done():
            next_preview = asyncio.create_task(previews.get())
            await asyncio.wait({run, next_preview}, return_when=asyncio.FIRST_COMPLETED)
            if next_preview.done():
                yield _partial(next_preview.result(), index, int(time.time()), fields)
                index += 1
            else:
                next_preview.cancel()
        for image in _drain(previews):
            yield _partial(image, index, int(time.time()), fields)
            index += 1
        try:
            result = run.result()
        except Refused as exc:
            yield error_event(exc.code, exc.message)
            return
        except Exception:
            log.exception("a streamed image generation failed in the gateway")
            yield error_event("internal", "internal error; see the gateway log")
            return
        if not result.client_gone:
            yield completed_events(result, int(time.time()), fields.model_dump(), fields.size)
    finally:
        watcher.cancel()
        if not run.done():
            gone.set()  # the client left mid-stream: stop the run (it settles as cancelled)
            run.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task[SyncResult]) -> None:
    if not task.cancelled():
        task.exception()  # a run ended after its client left: its outcome is in its record

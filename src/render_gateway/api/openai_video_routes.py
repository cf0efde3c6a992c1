"""OpenAI-compatible video routes: ``/v1/videos`` (create, list, retrieve, content, delete).

A video is a job of the async tier, run by the one use case underneath the native ``/queue``
and ``/jobs`` routes (``JobCases``: submit, view, cancel): the same auth, rate limit (creates
only, as ``POST /queue``), budget reservation, queue quotas, scheduling, retries, billing and
events. Only the shapes are OpenAI's (openai_video_shapes.py), errors included.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from render_gateway.api.asset_routes import admit_asset_inputs
from render_gateway.api.deps import caller, services
from render_gateway.api.http import ApiError, json_response, rate_headers, request_id_of
from render_gateway.api.openai_routes import OPENAI_ERRORS
from render_gateway.api.openai_video_shapes import (
    VIDEO_FORM_SCHEMA,
    VIDEO_JSON_SCHEMA,
    OpenAIVideo,
    OpenAIVideoDeleted,
    OpenAIVideoList,
    VideoRequestInvalid,
    read_video_create,
    submit_request,
    video_deleted,
    video_generation,
    video_list,
    video_object,
)
from render_gateway.application.refusals import Refused
from render_gateway.auth.principal import Principal
from render_gateway.core.jobs import Job
from render_gateway.stores.assets import AssetNotFound, CorruptAsset
from render_gateway.stores.jobs import JobFilter

router = APIRouter(prefix="/v1", tags=["openai"])

VIDEO_ERRORS: dict[int | str, dict[str, Any]] = {
    **OPENAI_ERRORS,
    404: {**OPENAI_ERRORS[404], "description": "unknown model, or no such video of yours"},
    409: {
        "model": OPENAI_ERRORS[400]["model"],
        "description": "not complete yet (content), or an Idempotency-Key reused with another body",
    },
}


async def _owned_video(video_id: str, request: Request, principal: Principal) -> Job:
    """The caller's own video job; anyone else's, or a job of another modality, is absent."""
    job = await services(request).job_cases.owned(video_id, principal)
    if job.request.get("modality") != "video":
        raise ApiError(404, "job_not_found", f"no video {video_id!r}")
    return job


async def _video(request: Request, job: Job) -> dict[str, Any]:
    return video_object(job, await services(request).job_cases.progress(job))


def _usage_headers(job: Job) -> dict[str, str]:
    """What the job was billed, once it has ended (as the native job's ``usage``)."""
    usage = job.extra.get("usage")
    if not isinstance(usage, dict) or not isinstance(usage.get("gpu_seconds"), int | float):
        return {}
    return {
        "X-GPU-Seconds": f"{usage['gpu_seconds']:.6f}",
        "X-Metered": "true" if usage.get("metered", True) else "false",
    }


@router.post(
    "/videos",
    response_model=OpenAIVideo,
    responses=VIDEO_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": VIDEO_JSON_SCHEMA},
                "multipart/form-data": {"schema": VIDEO_FORM_SCHEMA},
            },
        }
    },
    summary="Create a video (OpenAI): queue a t2v job, or i2v with an input_reference",
)
async def create_video(
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=64,
            description="the same key and body → the same video (as `/queue`'s idempotency_key)",
        ),
    ] = None,
) -> Response:
    try:
        fields, image = read_video_create(
            request.headers.get("content-type", ""), await request.body()
        )
    except VideoRequestInvalid as exc:
        details = {"field": exc.param} if exc.param else {}
        raise ApiError(400, "invalid_request", str(exc), details) from exc
    task, generation = video_generation(fields, image)
    generation = await admit_asset_inputs(request, principal, generation)
    cases = services(request).job_cases
    submitted = await cases.submit(
        submit_request(fields, task, generation, idempotency_key),
        principal,
        request_id_of(request),
    )
    headers = {**rate_headers(submitted.rate), "Location": f"/v1/videos/{submitted.job.id}"}
    return json_response(await _video(request, submitted.job), headers=headers)


@router.get(
    "/videos",
    response_model=OpenAIVideoList,
    responses=VIDEO_ERRORS,
    summary="Your videos (OpenAI), a cursor page",
)
async def list_videos(
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    after: Annotated[
        str | None,
        Query(min_length=1, max_length=64, description="the id of the last video of the page"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[
        Literal["asc", "desc"], Query(description="by creation: `desc` newest first")
    ] = "desc",
) -> Response:
    cases = services(request).job_cases
    jobs, has_more = await cases.listed(
        JobFilter(customer_id=principal.customer_id, modality="video"),
        after=after, limit=limit, newest_first=order == "desc",
    )  # fmt: skip
    return json_response(video_list([await _video(request, job) for job in jobs], has_more))


@router.get(
    "/videos/{video_id}",
    response_model=OpenAIVideo,
    responses=VIDEO_ERRORS,
    summary="One video (OpenAI): its status and progress",
)
async def retrieve_video(
    video_id: str, request: Request, principal: Annotated[Principal, Depends(caller)]
) -> Response:
    job = await _owned_video(video_id, request, principal)
    return json_response(await _video(request, job), headers=_usage_headers(job))


@router.get(
    "/videos/{video_id}/content",
    response_class=Response,
    responses={
        200: {"description": "the MP4", "content": {"video/mp4": {}}},
        **VIDEO_ERRORS,
    },
    summary="A video's bytes (OpenAI)",
)
async def video_content(
    video_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    variant: Annotated[
        Literal["video"], Query(description="`video` only: no thumbnail or spritesheet is made")
    ] = "video",
) -> Response:
    job = await _owned_video(video_id, request, principal)
    svc = services(request)
    asset_id = svc.job_cases.output(job)
    try:
        found, data = await svc.assets.get(asset_id)
    except AssetNotFound as exc:
        raise ApiError(404, "asset_not_found", f"the output of {video_id} is gone") from exc
    except CorruptAsset as exc:
        raise ApiError(500, "asset_corrupt", "the stored bytes fail their hash check") from exc
    headers = {"ETag": f'"{found.blake3}"', "Cache-Control": "private, max-age=31536000, immutable"}
    return Response(data, media_type=found.content_type, headers=headers)


@router.delete(
    "/videos/{video_id}",
    response_model=OpenAIVideoDeleted,
    responses=VIDEO_ERRORS,
    summary="Cancel a video (OpenAI): deleted is true when it was queued or running",
)
async def delete_video(
    video_id: str, request: Request, principal: Annotated[Principal, Depends(caller)]
) -> Response:
    job = await _owned_video(video_id, request, principal)
    deleted = False
    if not job.status.terminal:
        try:
            await services(request).job_cases.cancel(job.id, principal)
            deleted = True
        except Refused as exc:
            if exc.code != "job_finished":  # it ended meanwhile: nothing was stopped
                raise
    return json_response(video_deleted(job.id, deleted))

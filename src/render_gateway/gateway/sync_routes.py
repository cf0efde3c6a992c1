"""The sync tier: run now and answer with the bytes, or 503 when no backend has a free slot."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from render_gateway.auth.principal import Principal
from render_gateway.gateway.api_models import ERROR_RESPONSES
from render_gateway.gateway.deps import caller, charge_rate_limit, services
from render_gateway.gateway.http import ApiError, request_id_of
from render_gateway.gateway.job_routes import require_backend, resolve_route, validated_generation
from render_gateway.gateway.runner import generation_payload
from render_gateway.generation import GenerationFields, Task
from render_gateway.inference.kserve_client import BackendError, BackendResult
from render_gateway.scheduling.dispatch import NoCapacity

router = APIRouter()

BYTES_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the first output's bytes",
        "content": {"image/png": {}, "video/mp4": {}},
    },
    **ERROR_RESPONSES,
}


async def _watch_disconnect(request: Request, gone: asyncio.Event) -> None:
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
    svc = services(request)
    entry = resolve_route(svc, modality, family, model, task)
    family, model = entry.family, entry.model
    generation = validated_generation(task, body.model_dump(exclude_none=True))
    require_backend(svc, family, model, backend)
    charge_rate_limit(request, response, principal)
    routing = {
        "task": task,
        "format": format_name or entry.default_format,
        "generation": generation,
    }
    started = time.perf_counter()
    # A client that hangs up cancels the run on the backend (and frees the slot).
    client_gone = asyncio.Event()
    watcher = asyncio.create_task(_watch_disconnect(request, client_gone))
    try:
        outcome = await svc.dispatcher.run(
            family,
            model,
            generation_payload(routing),
            request_id_of(request),
            cancel=client_gone,
            backend_type=backend,
        )
    except NoCapacity as exc:
        raise ApiError(503, "no_capacity", str(exc), headers={"Retry-After": "1"}) from exc
    except BackendError as exc:
        status = 400 if exc.status == 400 else 502
        raise ApiError(status, exc.code, str(exc), {"retriable": exc.retriable}) from exc
    finally:
        watcher.cancel()
    if outcome.cancelled:
        return Response(status_code=499)  # nobody is listening; the status is for the log
    result = outcome.result
    if not isinstance(result, BackendResult) or not result.outputs:
        raise ApiError(502, "no_output", "the backend returned no output")
    assets = [await svc.assets.put(data, result.content_type) for data in result.outputs]
    headers = {
        "Content-Location": f"/assets/{assets[0].id}",
        "X-Duration-Ms": str(round((time.perf_counter() - started) * 1000)),
        **dict(response.headers),
    }
    if (seed := result.parameters.get("seed")) is not None:
        headers["X-Seed"] = str(seed)
    if result.gpu_seconds is not None:
        headers["X-GPU-Seconds"] = f"{result.gpu_seconds:.6f}"
    headers.pop("content-length", None)
    return Response(result.outputs[0], media_type=result.content_type, headers=headers)


def _add_sync_route(modality: str, tasks: tuple[str, ...]) -> None:
    """POST /{modality}/{family}/{model}/{task}: one route per modality, as in the contract."""

    async def run_now(
        family: str,
        model: str,
        task: Task,
        body: GenerationFields,
        request: Request,
        response: Response,
        principal: Annotated[Principal, Depends(caller)],
        format: Annotated[str | None, Query(max_length=32)] = None,
        backend: Annotated[str | None, Query(max_length=64)] = None,
    ) -> Response:
        if task not in tasks:
            raise ApiError(400, "invalid_request", f"task {task!r} is not a {modality} task")
        return await _run_now(
            modality, family, model, task, body, request, response, principal, format, backend
        )

    run_now.__name__ = f"{modality}_now"
    router.post(
        f"/{modality}/{{family}}/{{model}}/{{task}}",
        responses=BYTES_RESPONSE,
        response_class=Response,
        summary=f"Generate {'an image' if modality == 'image' else 'a video'} now (sync tier)",
    )(run_now)


_add_sync_route("image", ("t2i", "i2i", "edit"))
_add_sync_route("video", ("t2v", "i2v"))

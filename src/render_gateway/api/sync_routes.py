"""The sync tier: run now and answer with the bytes, or 503 when no backend has a free slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from render_gateway.api.api_models import (
    ERROR_RESPONSES,
    FORMAT_DESCRIPTION,
    FORMAT_FOR_MODALITY,
)
from render_gateway.api.asset_routes import admit_asset_inputs
from render_gateway.api.deps import caller, charge_rate_limit, refund_rate_limit, services
from render_gateway.api.http import ApiError, request_id_of
from render_gateway.api.job_routes import (
    admit_budget,
    offered_format,
    require_backend,
    resolve_route,
    validated_generation,
)
from render_gateway.application.asset_inputs import inline_asset_inputs
from render_gateway.application.scheduler import generation_payload
from render_gateway.application.services import GatewayServices
from render_gateway.auth.principal import Principal
from render_gateway.generation import TASK_FIELDS, TASK_MODALITY, GenerationFields, Task
from render_gateway.inference.kserve_client import BackendError, BackendResult, Progress
from render_gateway.metering.meter import BUDGET_EXHAUSTED
from render_gateway.metering.work import work_of
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
    generation = await admit_asset_inputs(
        request, principal, validated_generation(task, body.model_dump(exclude_none=True))
    )
    forwarded_format = offered_format(entry, task, format_name)
    require_backend(svc, family, model, backend)
    charge_rate_limit(request, response, principal)
    routing = {
        "task": task,
        "format": forwarded_format,
        "generation": generation,
    }
    try:  # asset inputs become data: URIs: a backend never fetches the gateway
        payload = generation_payload(await inline_asset_inputs(svc.assets, routing))
    except BackendError as exc:  # the asset vanished since it was admitted a moment ago
        raise ApiError(400, exc.code, str(exc)) from exc
    request_id = request_id_of(request)
    created = time.time()
    work = work_of(modality, family, model, task, routing["format"], generation)
    admit_budget(svc, request_id, principal, work, created)
    meter = SyncMeter(svc, request_id, principal, modality, family, model, created)
    started = time.perf_counter()
    # A client that hangs up cancels the run on the backend (and frees the slot); so does a
    # budget whose next step would be crossed.
    stop = asyncio.Event()
    budget_ran_out = False

    def charge(progress: Progress) -> None:
        nonlocal budget_ran_out
        elapsed = time.perf_counter() - started
        if not svc.meter.progress(
            request_id, progress.step, progress.steps, elapsed, progress.gpu_seconds
        ):
            budget_ran_out = True
            stop.set()

    watcher = asyncio.create_task(_watch_disconnect(request, stop))
    try:
        outcome = await svc.dispatcher.run(
            family,
            model,
            payload,
            request_id,
            charge,
            cancel=stop,
            backend_type=backend,
        )
    except NoCapacity as exc:
        svc.meter.settled(request_id, None)  # it never ran: nothing to bill, nothing held
        refund_rate_limit(request, principal)
        raise ApiError(503, "no_capacity", str(exc), headers={"Retry-After": "1"}) from exc
    except BackendError as exc:
        await meter.finish("error", {}, None, exc.code)
        status = 400 if exc.status == 400 else 502
        raise ApiError(status, exc.code, str(exc), {"retriable": exc.retriable}) from exc
    except BaseException:
        svc.meter.settled(request_id, None)
        raise
    finally:
        watcher.cancel()
    result = outcome.result
    if outcome.cancelled and budget_ran_out:
        await meter.finish("cancelled", result.parameters, outcome.backend_id, BUDGET_EXHAUSTED)
        gpu_seconds = result.parameters.get("gpu_seconds")
        raise ApiError(
            402, BUDGET_EXHAUSTED, "the run was stopped: the monthly budget ran out",
            {"gpu_seconds": gpu_seconds if isinstance(gpu_seconds, int | float) else None},
        )  # fmt: skip
    if outcome.cancelled:
        await meter.finish("cancelled", result.parameters, outcome.backend_id)
        return Response(status_code=499)  # nobody is listening; the status is for the log
    await meter.finish("success", result.parameters, outcome.backend_id)
    if not isinstance(result, BackendResult) or not result.outputs:
        raise ApiError(502, "no_output", "the backend returned no output")
    assets = [
        await svc.assets.put(data, result.content_type, principal.customer_id)
        for data in result.outputs
    ]
    headers = {
        "Content-Location": svc.asset_urls.url(assets[0].id),  # signed: shareable, expiring
        "X-Duration-Ms": str(round((time.perf_counter() - started) * 1000)),
        **dict(response.headers),
    }
    if (seed := result.parameters.get("seed")) is not None:
        headers["X-Seed"] = str(seed)
    if result.gpu_seconds is not None:
        headers["X-GPU-Seconds"] = f"{result.gpu_seconds:.6f}"
    headers.pop("content-length", None)
    return Response(result.outputs[0], media_type=result.content_type, headers=headers)


class SyncMeter:
    """Records a sync request's usage (durably, before the response goes out)."""

    def __init__(
        self,
        svc: GatewayServices,
        request_id: str,
        principal: Principal,
        modality: str,
        family: str,
        model: str,
        created: float,
    ) -> None:
        self._svc, self._request_id, self._principal = svc, request_id, principal
        self._route = (modality, family, model)
        self._created = created

    async def finish(
        self,
        outcome: Literal["success", "error", "cancelled"],
        parameters: Mapping[str, Any],
        backend: str | None,
        error_code: str | None = None,
    ) -> None:
        modality, family, model = self._route
        record = self._svc.meter.record(
            request_id=self._request_id,
            customer_id=self._principal.customer_id,
            plan=self._principal.plan,
            tier="sync",
            modality=modality,
            family=family,
            model=model,
            created_at=self._created,
            started_at=self._created,
            ended_at=time.time(),
            outcome=outcome,
            parameters=parameters,
            backend=backend,
            error_code=error_code,
        )
        try:
            await self._svc.store.usage_log.append_usage(record)
        finally:
            self._svc.meter.settled(self._request_id, record.to_dict())


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

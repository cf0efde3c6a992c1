"""The sync tier's use case: run now on a free slot and return the bytes, billing the request
before the answer goes out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from render_gateway.application.admission import Admission
from render_gateway.application.asset_inputs import inline_asset_inputs
from render_gateway.application.refusals import RateInfo, RefusalKind, Refused
from render_gateway.application.scheduler import generation_payload
from render_gateway.application.settle import Settlement
from render_gateway.auth.principal import Principal
from render_gateway.core.usage_records import UsageRecord
from render_gateway.inference.backend import BackendError, BackendResult, Progress
from render_gateway.metering.meter import BUDGET_EXHAUSTED, Meter
from render_gateway.metering.work import work_of
from render_gateway.scheduling.dispatch import Dispatcher, NoCapacity
from render_gateway.stores.assets import AssetStore


@dataclass(frozen=True)
class SyncRequest:
    modality: str
    family: str
    model: str
    task: str
    format: str | None
    backend: str | None
    generation: dict[str, Any]  # asset inputs already admitted
    # An explicit width × height instead of a format (the OpenAI routes' ``size``); checked
    # against the model's side limits and forwarded as ``width``/``height``.
    size: tuple[int, int] | None = None


@dataclass(frozen=True)
class SyncResult:
    """What came back; ``client_gone``: the caller hung up, the run was stopped and billed."""

    rate: RateInfo
    client_gone: bool = False
    data: bytes = b""
    content_type: str = ""
    asset_url: str = ""
    # Every output and its signed asset URL (``data``/``asset_url`` are the first's).
    outputs: tuple[bytes, ...] = ()
    asset_urls: tuple[str, ...] = ()
    seconds: float = 0.0
    seed: Any = None
    gpu_seconds: float | None = None  # as billed (the usage record's)
    metered: bool = True  # False: the backend measured nothing (usage_records.build_record)


class RunNow:
    def __init__(
        self,
        admission: Admission,
        dispatcher: Dispatcher,
        assets: AssetStore,
        meter: Meter,
        settlement: Settlement,
        asset_url: Callable[[str], str],
    ) -> None:
        self._admission, self._dispatcher, self._assets = admission, dispatcher, assets
        self._meter, self._settlement, self._asset_url = meter, settlement, asset_url

    async def run(
        self,
        body: SyncRequest,
        principal: Principal,
        request_id: str,
        gone: asyncio.Event,
        on_preview: Callable[[bytes, Progress], Awaitable[None]] | None = None,
    ) -> SyncResult:
        """``gone`` is set when the caller hangs up: the run is stopped on its backend (and
        its slot freed); so is a run whose budget's next step would be crossed. ``on_preview``
        gets each intermediate image the backend sends (asked for with ``previews``)."""
        admission = self._admission
        entry = admission.route(body.modality, body.family, body.model, body.task)
        family, model = entry.family, entry.model
        generation = admission.generation(body.task, body.generation)
        if body.size is None:
            forwarded_format = admission.format(entry, body.task, body.format)
        else:
            admission.size(entry, body.task, *body.size)
            forwarded_format = None
            generation = {**generation, "width": body.size[0], "height": body.size[1]}
        admission.backend(family, model, body.backend)
        rate = await admission.rate(principal)
        routing = {
            "modality": body.modality,
            "task": body.task,
            "format": forwarded_format,
            "generation": generation,
        }
        try:  # asset inputs become data: URIs: a backend never fetches the gateway
            payload = generation_payload(await inline_asset_inputs(self._assets, routing))
        except BackendError as exc:  # the asset vanished since it was admitted a moment ago
            raise Refused(RefusalKind.invalid, exc.code, str(exc)) from exc
        created = time.time()
        work = work_of(body.modality, family, model, body.task, forwarded_format, generation)
        await admission.budget(request_id, principal, work, created)
        started = time.perf_counter()
        budget_ran_out = False

        async def charge(progress: Progress) -> None:
            nonlocal budget_ran_out
            if progress.preview is not None and on_preview is not None:
                await on_preview(progress.preview, progress)
            elapsed = time.perf_counter() - started
            if not await self._meter.progress(
                request_id, progress.step, progress.steps, elapsed, progress.gpu_seconds
            ):
                budget_ran_out = True
                gone.set()

        async def finish(
            outcome: Literal["success", "error", "cancelled"],
            parameters: Mapping[str, Any],
            backend_id: str | None,
            error_code: str | None = None,
            attributed_seconds: float | None = None,
        ) -> UsageRecord:
            record = self._meter.record(
                request_id=request_id,
                customer_id=principal.customer_id,
                plan=principal.plan,
                tier="sync",
                modality=body.modality,
                family=family,
                model=model,
                created_at=created,
                started_at=created,
                ended_at=time.time(),
                outcome=outcome,
                parameters=parameters,
                backend=backend_id,
                error_code=error_code,
                attributed_seconds=attributed_seconds,
            )
            await self._settlement.sync_request(request_id, record)
            return record

        try:
            outcome = await self._dispatcher.run(
                family, model, payload, request_id, charge, cancel=gone, backend_type=body.backend
            )
        except NoCapacity as exc:
            await self._settlement.dropped(request_id)  # it never ran: nothing billed or held
            await admission.refund_rate(principal)
            raise Refused(
                RefusalKind.unavailable, "no_capacity", str(exc), retry_after_seconds=1
            ) from exc
        except BackendError as exc:
            await finish("error", {}, exc.backend_id, exc.code)
            kind = RefusalKind.invalid if exc.status == 400 else RefusalKind.upstream
            raise Refused(kind, exc.code, str(exc), {"retriable": exc.retriable}) from exc
        except BaseException:
            await self._settlement.dropped(request_id)
            raise
        result = outcome.result
        attributed = result.attributed_seconds
        if outcome.cancelled and budget_ran_out:
            await finish(
                "cancelled", result.parameters, outcome.backend_id, BUDGET_EXHAUSTED, attributed
            )
            gpu_seconds = result.parameters.get("gpu_seconds")
            raise Refused(
                RefusalKind.payment, BUDGET_EXHAUSTED,
                "the run was stopped: the monthly budget ran out",
                {"gpu_seconds": gpu_seconds if isinstance(gpu_seconds, int | float) else None},
            )  # fmt: skip
        if outcome.cancelled:
            await finish("cancelled", result.parameters, outcome.backend_id, None, attributed)
            return SyncResult(rate, client_gone=True)
        record = await finish("success", result.parameters, outcome.backend_id, None, attributed)
        if not isinstance(result, BackendResult) or not result.outputs:
            raise Refused(RefusalKind.upstream, "no_output", "the backend returned no output")
        assets = [
            await self._assets.put(data, result.content_type, principal.customer_id)
            for data in result.outputs
        ]
        urls = tuple(self._asset_url(asset.id) for asset in assets)  # signed: shareable, expiring
        return SyncResult(
            rate,
            data=result.outputs[0],
            content_type=result.content_type,
            asset_url=urls[0],
            outputs=tuple(result.outputs),
            asset_urls=urls,
            seconds=time.perf_counter() - started,
            seed=result.parameters.get("seed", generation.get("seed")),
            gpu_seconds=record.gpu_seconds,
            metered=record.metered,
        )

"""The backend output convention (docs/WORKER.md, "The backend convention"), without I/O.

A backend answers with named outputs. The gateway asks for the ones it wants by name, so a
model's other outputs (or their order) never matter: the media output (the backend's
``output`` setting; by default ``images``, or ``video`` for a model that has no ``images``),
and, where the model declares them, ``gpu_seconds`` (FP64 ``[1]``: the run's device time),
``usage_claim`` (BYTES ``[1]``: the signed claim's JSON text) and ``seed`` (INT64 ``[1]``: the
seed that ran). The same values may come as response parameters instead (Render's worker
sends them so; Triton's Python backend 2.51 cannot set response parameters, hence outputs).

Both transports (HTTP and gRPC) decode into ``codec.InferResponse`` and read it here.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from render_gateway.core.usage_records import seconds_reading
from render_gateway.inference.backend import BackendError, BackendResult, Progress
from render_gateway.inference.media_types import servable_media_type, sniff_media_type
from render_gateway.kserve import codec

DEFAULT_MEDIA_OUTPUTS = ("images", "video")
# Outputs whose values become result parameters, when the model declares them.
VALUE_OUTPUTS = ("gpu_seconds", "usage_claim", "seed")
# Outputs a progress response may carry (a decoupled Triton model's per-step responses).
PROGRESS_OUTPUTS = ("step", "steps", "progress", "gpu_seconds")

_STRUCT: dict[str, str] = {
    "BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q",
    "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q",
    "FP16": "e", "FP32": "f", "FP64": "d",
}  # fmt: skip


@dataclass(frozen=True)
class OutputPlan:
    """Which outputs to ask a model for. ``media`` None: the model's metadata is unknown, so
    nothing is asked for by name (the backend sends all) and the media output is found by the
    convention's names in the answer."""

    media: str | None
    values: tuple[str, ...] = ()

    @property
    def requested(self) -> tuple[str, ...]:
        return () if self.media is None else (self.media, *self.values)


class OutputPlans:
    """Per model of one backend: the plan from its metadata, read once. A model whose metadata
    could not be read is asked again after ``retry_seconds`` (meanwhile nothing is asked for by
    name), so a backend without metadata costs no extra request per run."""

    def __init__(
        self,
        configured: str | None,
        read_metadata: Callable[[str], Awaitable[Mapping[str, Any] | None]],
        retry_seconds: float = 30.0,
    ) -> None:
        self._configured = configured
        self._read_metadata = read_metadata
        self._retry_seconds = retry_seconds
        self._plans: dict[str, OutputPlan] = {}
        self._retry_at: dict[str, float] = {}

    def learned(self, model: str, metadata: Mapping[str, Any]) -> None:
        self._plans[model] = plan_outputs(self._configured, metadata)
        self._retry_at.pop(model, None)

    async def plan(self, model: str) -> OutputPlan:
        plan = self._plans.get(model)
        if plan is not None:
            return plan
        if time.monotonic() >= self._retry_at.get(model, 0.0):
            metadata = await self._read_metadata(model)  # the client calls learned()
            if metadata is None:
                self._retry_at[model] = time.monotonic() + self._retry_seconds
        return self._plans.get(model, OutputPlan(self._configured))


def _output_names(metadata: Mapping[str, Any] | None) -> list[str] | None:
    if metadata is None:
        return None
    outputs = metadata.get("outputs")
    if not isinstance(outputs, list):
        return None
    return [o["name"] for o in outputs if isinstance(o, dict) and isinstance(o.get("name"), str)]


def plan_outputs(configured: str | None, metadata: Mapping[str, Any] | None) -> OutputPlan:
    """The outputs to ask for, from the backend's ``output`` setting and the model's metadata
    (KServe v2 ``GET /v2/models/{m}`` or ``ModelMetadata``)."""
    names = _output_names(metadata)
    if names is None:
        return OutputPlan(configured)
    media = configured or next((n for n in DEFAULT_MEDIA_OUTPUTS if n in names), None)
    if media is None:
        media = next((n for n in names if n not in VALUE_OUTPUTS), None)
    wanted = dict.fromkeys((*VALUE_OUTPUTS, *PROGRESS_OUTPUTS))  # ordered, without repeats
    values = tuple(n for n in wanted if n in names and n != media)
    return OutputPlan(media, values)


def numbers(tensor: codec.Tensor) -> list[Any]:
    """A numeric tensor's elements, from JSON data or raw little-endian bytes."""
    if tensor.datatype == "BYTES":
        raise codec.ProtocolError(f"output {tensor.name!r} is BYTES, not a number")
    if isinstance(tensor.data, bytes):
        fmt = _STRUCT.get(tensor.datatype)
        if fmt is None:  # BF16 has no struct code; nothing of the convention uses it
            raise codec.ProtocolError(f"output {tensor.name!r}: {tensor.datatype} is not read")
        size = struct.calcsize(fmt)
        if len(tensor.data) % size:
            raise codec.ProtocolError(f"output {tensor.name!r}: raw data is not whole elements")
        return list(struct.unpack(f"<{len(tensor.data) // size}{fmt}", tensor.data))
    return list(tensor.data)


def _scalar_value(tensor: codec.Tensor) -> codec.Scalar | None:
    """The first element of a value output, as a parameter: text for BYTES, else the number."""
    if tensor.datatype == "BYTES":
        elements = tensor.data
        if isinstance(elements, bytes) or not elements:
            return None
        try:
            return bytes(elements[0]).decode()
        except UnicodeDecodeError:
            return None
    values = numbers(tensor)
    if not values:
        return None
    value = values[0]
    if tensor.datatype in ("FP16", "FP32", "FP64"):
        return float(value)
    if tensor.datatype == "BOOL":
        return bool(value)
    # JSON data of an integer output may be any number (1e400 read leniently is infinity).
    return int(value) if math.isfinite(value) else None


def _find(outputs: Sequence[codec.Tensor], name: str) -> codec.Tensor | None:
    return next((t for t in outputs if t.name == name), None)


def media_tensor(response: codec.InferResponse, plan: OutputPlan) -> codec.Tensor | None:
    if plan.media is not None:
        return _find(response.outputs, plan.media)
    for name in DEFAULT_MEDIA_OUTPUTS:
        if (tensor := _find(response.outputs, name)) is not None:
            return tensor
    return next(
        (
            t
            for t in response.outputs
            if t.datatype == "BYTES" and t.name not in (*VALUE_OUTPUTS, *PROGRESS_OUTPUTS)
        ),
        None,
    )


def value_parameters(
    outputs: Sequence[codec.Tensor], names: Sequence[str]
) -> dict[str, codec.Scalar]:
    found: dict[str, codec.Scalar] = {}
    for name in names:
        tensor = _find(outputs, name)
        if tensor is not None and (value := _scalar_value(tensor)) is not None:
            found[name] = value
    return found


def read_result(response: codec.InferResponse, plan: OutputPlan, request_id: str) -> BackendResult:
    """The result of a run: the media output's elements, its content type (declared by the
    output or the response, else read from the bytes), and the parameters with the value
    outputs folded in (a response parameter wins over an output of the same name)."""
    tensor = media_tensor(response, plan)
    if tensor is None:
        wanted = plan.media or " or ".join(DEFAULT_MEDIA_OUTPUTS)
        got = ", ".join(t.name for t in response.outputs) or "none"
        raise BackendError(
            f"the backend answered without the output {wanted!r} (it sent: {got})",
            code="backend_protocol",
            retriable=False,
        )
    if tensor.datatype != "BYTES" or isinstance(tensor.data, bytes):
        raise BackendError(
            f"output {tensor.name!r} is {tensor.datatype}, not BYTES",
            code="backend_protocol",
            retriable=False,
        )
    elements = [bytes(e) for e in tensor.data]
    if not elements or not all(elements):
        # Billing a run for an answer with nothing in it: shape [0], or an empty element.
        raise BackendError(
            f"output {tensor.name!r} holds no media", code="backend_protocol", retriable=False
        )
    parameters: dict[str, codec.Scalar] = {
        **value_parameters(response.outputs, VALUE_OUTPUTS),
        **response.parameters,
    }
    if not _is_seed(parameters.get("seed")):
        parameters.pop("seed", None)  # the gateway's own seed stands (the one it sent)
    declared = servable_media_type(
        tensor.parameters.get("content_type") or response.parameters.get("content_type")
    )
    content_type = declared or sniff_media_type(elements[0]) or codec.BINARY_CONTENT_TYPE
    return BackendResult(
        request_id=response.id or request_id,
        outputs=elements,
        content_type=content_type,
        parameters=parameters,
    )


def _is_seed(value: object) -> bool:
    """A seed the job can show and store: an integer of 64 bits at most, not negative."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64


def is_progress(response: codec.InferResponse, plan: OutputPlan) -> bool:
    """A streamed response without the media output is a progress report."""
    return media_tensor(response, plan) is None


def progress_values(response: codec.InferResponse) -> dict[str, codec.Scalar]:
    """step, steps, progress, gpu_seconds of a progress response, from its parameters or
    its outputs."""
    return {**value_parameters(response.outputs, PROGRESS_OUTPUTS), **response.parameters}


def to_progress(values: Mapping[str, Any]) -> Progress:
    """A progress event from a response's values (``progress`` derived when not given)."""
    gpu_seconds = seconds_reading(values.get("gpu_seconds"))
    step, steps = _count(values.get("step")), _count(values.get("steps"))
    given = values.get("progress")
    fraction = float(given) if _finite(given) else step / steps if steps > 0 else 0.0
    clamped = min(1.0, max(0.0, fraction))
    return Progress(step, steps, clamped, gpu_seconds, preview_image(values.get("preview")))


# A preview is a best-effort picture of the run so far: anything else where one is expected
# (not base64, too large, not an image) is dropped, never an error of the run.
MAX_PREVIEW_BYTES = 8 * 1024 * 1024


def preview_image(value: object) -> bytes | None:
    """The image bytes of a progress report's ``preview`` (base64 PNG, JPEG or WebP)."""
    if not isinstance(value, str) or len(value) > MAX_PREVIEW_BYTES * 4 // 3 + 4:
        return None
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if sniff_media_type(data) in PREVIEW_TYPES else None


PREVIEW_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})


def _finite(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: object) -> int:
    """A step count from a progress report; 0 for what is none (missing, text, NaN, -1):
    progress is shown, never billed, so a garbled report is not worth failing the run."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return 0
    return int(value) if math.isfinite(value) and 0 <= value < 2**63 else 0

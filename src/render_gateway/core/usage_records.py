"""The usage record: one per finished request (success, error, timeout, cancel after start).

Pure: built from what the gateway already knows when a request ends, priced at that moment,
and serialised to a plain dict that is persisted with the job (the record is the bill line, so
its price and cost never change after the fact).
"""

from __future__ import annotations

import base64
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from render_gateway.usage_claim import ClaimCheck, check_claim_text

log = logging.getLogger(__name__)

UsageStatus = Literal["success", "error", "timeout", "cancelled"]
ModelType = Literal["llm", "rectified_flow", "other"]
Tier = Literal["sync", "async"]

STATUSES: tuple[UsageStatus, ...] = ("success", "error", "timeout", "cancelled")
# Families whose models are rectified-flow transformers; everything else here is "other".
RECTIFIED_FLOW_FAMILIES = frozenset({"flux", "sd3", "sd35", "auraflow", "lumina", "hidream"})
# Error codes that mean the run ran out of time (recorded as status "timeout", never billed).
TIMEOUT_CODES = frozenset({"timeout", "ttl_expired"})
NANOS = 1_000_000_000
# A device-time reading above this (about 31 years) is no reading: a backend's garbage, whose
# cost would not even fit the record's int64 column.
MAX_GPU_SECONDS = 1e9
# Counts (steps, dimensions) are uint32 columns; a value outside is the backend's garbage.
_MAX_COUNT = 2**32


def billable(status: UsageStatus) -> bool:
    """What the customer pays for: a finished run, or one they cancelled after it started (the
    GPU time was spent on their behalf). Errors and timeouts are ours and cost nothing."""
    return status in ("success", "cancelled")


def usage_status(
    outcome: Literal["success", "error", "cancelled"], error_code: str | None
) -> UsageStatus:
    if outcome == "error" and error_code in TIMEOUT_CODES:
        return "timeout"
    return outcome


def model_type(family: str) -> ModelType:
    return "rectified_flow" if family.lower() in RECTIFIED_FLOW_FAMILIES else "other"


def cost_nanos(gpu_seconds: float, unit_price: float) -> int:
    """Cost in billionths of the currency unit, rounded half-up once per record."""
    return math.floor(gpu_seconds * unit_price * NANOS + 0.5)


def new_event_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class UsageRecord:
    event_id: str
    request_id: str
    customer_id: str
    plan: str
    tier: Tier
    modality: str
    family: str
    model: str
    timestamp: float  # when the request ended (epoch seconds, UTC)
    status: UsageStatus
    gpu_seconds: float
    metered: bool  # False: the backend reported no GPU time; gpu_seconds is wall time
    queue_time_us: int
    inference_time_us: int
    total_time_us: int
    unit_price: float  # currency per GPU-second, from the plan and family at the time
    currency: str
    cost_nanos: int  # 0 unless billable
    job_id: str | None = None
    backend: str | None = None
    device_uuid: str | None = None
    device_kind: str | None = None
    error_code: str | None = None
    num_steps: int = 0
    input_dims: tuple[int, ...] = ()
    batch_size: int = 1
    input_tokens: int = 0
    output_tokens: int = 0
    usage_claim: str | None = None  # the backend's signed claim (the cold path verifies it)
    # Checked when the request settled, so the record carries what the audit trail seals: the
    # node key (base64) that verified the claim, or why the claim did not verify.
    node_public_key: str | None = None
    claim_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return f"{self.modality}/{self.family}/{self.model}"

    @property
    def model_type(self) -> ModelType:
        return model_type(self.family)

    @property
    def billable(self) -> bool:
        return billable(self.status)

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: that deep-copies every value and costs ~10× as much, on the
        # event loop, for every request.
        data = {name: getattr(self, name) for name in _FIELDS}
        data["extra"] = dict(self.extra)
        data["input_dims"] = list(self.input_dims)
        data["model_name"] = self.model_name
        data["billable"] = self.billable
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageRecord:
        names = cls.__dataclass_fields__
        values = {k: v for k, v in data.items() if k in names}
        values["input_dims"] = tuple(values.get("input_dims", ()))
        return cls(**values)


_FIELDS = tuple(f.name for f in fields(UsageRecord))


def _int(parameters: Mapping[str, Any], key: str, default: int = 0) -> int:
    """A count from the backend's parameters; ``default`` for anything a count cannot be (a
    string, NaN, infinity, a negative or oversized number: the uint32 columns refuse them)."""
    value = parameters.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return default
    if not math.isfinite(value) or not 0 <= value < _MAX_COUNT:
        return default
    return int(value)


def seconds_reading(value: object) -> float | None:
    """A number of seconds fit to bill: finite, not negative, not absurd; else None (a
    backend's NaN, -1 or 1e300 must not become a NaN, negative or unstorable cost)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and 0.0 <= seconds <= MAX_GPU_SECONDS else None


def build_record(
    *,
    request_id: str,
    customer_id: str,
    plan: str,
    tier: Tier,
    modality: str,
    family: str,
    model: str,
    created_at: float,
    started_at: float,
    ended_at: float,
    outcome: Literal["success", "error", "cancelled"],
    parameters: Mapping[str, Any],
    unit_price: float,
    currency: str,
    backend: str | None = None,
    error_code: str | None = None,
    job_id: str | None = None,
    batch_size: int = 1,
    event_id: str | None = None,
    node_keys: Mapping[str, bytes] | None = None,
    attributed_seconds: float | None = None,
) -> UsageRecord:
    """The record for a request that ended now. ``parameters`` are the backend's response
    parameters (empty when it never answered); ``node_keys`` (key id → raw Ed25519 public key,
    as learned from the backends) check its signed claim now, not when it is sealed.

    A backend that reports no GPU time (a plain Triton model) makes the record ``metered:
    false`` and is billed what the gateway can attribute to the request
    (``attributed_seconds``: inference/attribution.py, never time queued inside the backend);
    a success with nothing attributed falls back to the gateway's wall time of the run; an
    error, a timeout or a cancel with nothing attributed bills nothing. A reported or
    attributed figure that is not a finite, non-negative number of seconds counts as none."""
    status = usage_status(outcome, error_code)
    reported = seconds_reading(parameters.get("gpu_seconds"))
    attributed = seconds_reading(attributed_seconds)
    wall = max(0.0, ended_at - started_at)
    metered = reported is not None
    if reported is not None:
        gpu_seconds = reported
    elif attributed is not None:
        gpu_seconds = round(min(attributed, wall), 6)  # never more than the run's wall time
    else:
        gpu_seconds = round(wall, 6) if status == "success" else 0.0
    if status in ("error", "timeout") and not metered:
        gpu_seconds = 0.0  # a run that never reported is not GPU time we can stand behind
    dims = tuple(
        _int(parameters, key) for key in ("num_frames", "width", "height") if key in parameters
    )
    steps = _int(parameters, "steps_completed", _int(parameters, "steps"))
    claim = str(parameters["usage_claim"]) if parameters.get("usage_claim") else None
    checked = (
        check_claim_text(claim, node_keys or {}, request_id, gpu_seconds if metered else None)
        if claim
        else ClaimCheck()
    )
    if checked.error is not None:  # the one side effect: an operator must hear of it
        log.error("request %s (backend %s): %s", request_id, backend, checked.error)
    return UsageRecord(
        event_id=event_id or new_event_id(),
        request_id=request_id,
        customer_id=customer_id,
        plan=plan,
        tier=tier,
        modality=modality,
        family=family,
        model=model,
        timestamp=ended_at,
        status=status,
        gpu_seconds=gpu_seconds,
        metered=metered,
        queue_time_us=round(max(0.0, started_at - created_at) * 1e6),
        inference_time_us=round(max(0.0, ended_at - started_at) * 1e6),
        total_time_us=round(max(0.0, ended_at - created_at) * 1e6),
        unit_price=unit_price,
        currency=currency,
        cost_nanos=cost_nanos(gpu_seconds, unit_price) if billable(status) else 0,
        job_id=job_id,
        backend=backend or None,
        device_uuid=str(parameters["device_uuid"]) if parameters.get("device_uuid") else None,
        device_kind=str(parameters["device_kind"]) if parameters.get("device_kind") else None,
        error_code=error_code,
        num_steps=steps,
        input_dims=dims,
        batch_size=batch_size,
        usage_claim=claim,
        node_public_key=_b64(checked.public_key) if checked.public_key else None,
        claim_error=checked.error,
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()

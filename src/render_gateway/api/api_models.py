"""Request and response bodies of the public API (API.md), as pydantic models for OpenAPI."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field

from render_gateway.formats import IMAGE_FORMATS, VIDEO_FORMATS
from render_gateway.generation import (
    PASS_THROUGH_MAX,
    PASS_THROUGH_MIN,
    EditFields,
    I2IFields,
    I2VFields,
    T2IFields,
    T2VFields,
)

# The contract's format names (formats.py), per modality.
ImageFormat = Literal["1024", "512", "portrait", "portrait-wide", "landscape", "landscape-wide"]
VideoFormat = Literal["720p", "720p-portrait", "480p", "480p-portrait", "square"]
assert set(get_args(ImageFormat)) == set(IMAGE_FORMATS), "formats.py and ImageFormat differ"
assert set(get_args(VideoFormat)) == set(VIDEO_FORMATS), "formats.py and VideoFormat differ"
FORMAT_FOR_MODALITY: dict[str, Any] = {"image": ImageFormat, "video": VideoFormat}
FORMAT_DESCRIPTION = (
    "output size; the formats a model offers for this task are in GET /models (another one:"
    " 400 format_not_offered). Default: the model's default format."
)

# Tiny PNGs for the examples (8×8, one colour): what an image input may be, inline.
EXAMPLE_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mM8UaHBgA0w"
    "MeAAg1MCAB4nAXgllso1AAAAAElFTkSuQmCC"
)
EXAMPLE_MASK = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mP8//8/AzbA"
    "xIADDE4JAFbUAw3/dxQWAAAAAElFTkSuQmCC"
)


def _example(task: str, **fields: Any) -> ConfigDict:
    example = {"modality": "image", "family": "sd", "model": "tiny", "task": task,
               "prompt": "a lighthouse at dusk", "seed": 42, "steps": 4, **fields}  # fmt: skip
    return ConfigDict(extra="allow", json_schema_extra={"examples": [example]})


class QueueRouting(BaseModel):
    """Where a queued request goes and how it waits: the fields every task shares."""

    modality: Literal["image", "video"]
    family: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=128)
    backend: str | None = Field(default=None, max_length=64)
    priority: Literal["high", "normal", "low"] = "normal"
    webhook: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    ttl: int | None = Field(default=None, ge=60, le=86400)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=64)
    start_deadline: float | None = Field(
        default=None, ge=1, le=86400,
        description="seconds: a job that has not started by then ends cancelled "
        "(deadline_exceeded), unbilled; the Cancel-After header says the same",
    )  # fmt: skip
    webhook_events_filter: list[Literal["start", "progress", "completed"]] | None = Field(
        default=None, min_length=1, max_length=3,
        description="what the webhook hears: start (the run started), progress (at most one "
        "a second), completed (the job ended; the default)",
    )  # fmt: skip


# One body per task (the document's ``oneOf`` on ``task``): each says which inputs its task
# needs and takes, and the formats of its modality. A modality the model's catalog entry does
# not have is a 404, as before; which formats a model offers for a task is in GET /models.
class QueueT2I(T2IFields, QueueRouting):
    model_config = _example("t2i")
    task: Literal["t2i"]
    format: ImageFormat | None = Field(default=None, description=FORMAT_DESCRIPTION)


class QueueI2I(I2IFields, QueueRouting):
    model_config = _example("i2i", image=EXAMPLE_IMAGE, strength=0.6)
    task: Literal["i2i"]
    format: ImageFormat | None = Field(default=None, description=FORMAT_DESCRIPTION)


class QueueEdit(EditFields, QueueRouting):
    model_config = _example("edit", image=EXAMPLE_IMAGE, mask=EXAMPLE_MASK)
    task: Literal["edit"]
    format: ImageFormat | None = Field(default=None, description=FORMAT_DESCRIPTION)


class QueueT2V(T2VFields, QueueRouting):
    model_config = ConfigDict(extra="allow")
    task: Literal["t2v"]
    format: VideoFormat | None = Field(default=None, description=FORMAT_DESCRIPTION)


class QueueI2V(I2VFields, QueueRouting):
    model_config = ConfigDict(extra="allow")
    task: Literal["i2v"]
    format: VideoFormat | None = Field(default=None, description=FORMAT_DESCRIPTION)


QueueBody = QueueT2I | QueueI2I | QueueEdit | QueueT2V | QueueI2V
QueueRequest = Annotated[QueueBody, Field(discriminator="task")]


class CancelRecorded(BaseModel):
    """DELETE /jobs/{id} when no run answered the cancel."""

    id: str
    status: Literal["running"]
    cancel: Literal["recorded"]


class QueuedResponse(BaseModel):
    id: str
    status: Literal["queued", "running", "complete", "error", "cancelled"]
    position: int | None
    eta_seconds: float | None
    events_url: str


class JobErrorBody(BaseModel):
    code: str
    message: str
    retriable: bool


class JobUsage(BaseModel):
    status: Literal["success", "error", "timeout", "cancelled"]
    gpu_seconds: float
    metered: bool = Field(
        description="false: the backend measured nothing; gpu_seconds is the time the gateway "
        "could attribute to this request (never time it queued inside the backend)"
    )
    billable: bool
    cost: float
    currency: str


class JobResponse(BaseModel):
    id: str
    status: Literal["queued", "running", "complete", "error", "cancelled"]
    position: int | None = None
    progress: float = Field(ge=0, le=1)
    eta_seconds: float | None = None
    output: str | None = None
    outputs: list[str] = Field(default_factory=list)
    seed: int | None = None
    retries: int = Field(default=0, ge=0, description="times it was re-queued after a crash")
    error: JobErrorBody | None = None
    created_at: str
    started_at: str | None = None
    completed_at: str | None = None
    request: dict[str, Any]
    usage: JobUsage | None = Field(default=None, description="what the job used, once it ended")


class ListedJob(JobResponse):
    customer_id: str


class JobList(BaseModel):
    data: list[ListedJob] = Field(description="newest first")
    has_more: bool
    next_after: str | None = Field(
        description="pass as `after` for the next page (the last job's id); null: no more"
    )


class TimelineEvent(BaseModel):
    type: str = Field(
        description="queued, started, progress, preview, complete, error, cancelled (others "
        "may be added)"
    )
    at: str | None = Field(description="ISO 8601; null for an event recorded without a time")
    data: dict[str, Any]


class JobTimeline(BaseModel):
    id: str
    events: list[TimelineEvent]
    source: Literal["events", "job"] = Field(
        description="`events`: the job's recorded event log; `job`: rebuilt from the job's own "
        "times (no log: never started, or the log was pruned)"
    )


class LaneStats(BaseModel):
    lane: Literal["high", "normal", "low"]
    depth: int = Field(ge=0)
    oldest_wait_seconds: float | None = Field(
        description="now minus the created_at of the lane's head (its oldest job); null: empty"
    )


class QueueStats(BaseModel):
    lanes: list[LaneStats]
    running: int = Field(ge=0)
    queued: int = Field(ge=0)


class ErrorBody(BaseModel):
    error: str
    message: str
    request_id: str
    details: dict[str, Any] = Field(default_factory=dict)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "invalid request"),
        (401, "missing or bad credentials"),
        (403, "not allowed for this plan"),
        (404, "not found (or not yours)"),
        (409, "conflict"),
        (413, "body too large"),
        (429, "rate limit or queue quota reached"),
        (503, "no capacity"),
    )
}


# The same errors for a route whose success is not JSON (an event stream): spelled out, or
# FastAPI would declare them in the route's own media type.
JSON_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": entry["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for status, entry in ERROR_RESPONSES.items()
}

REDIRECT_RESPONSE: dict[int | str, dict[str, Any]] = {
    303: {
        "description": "see the output's asset (no body)",
        "headers": {"Location": {"description": "the asset URL", "schema": {"type": "string"}}},
        "content": {},
    }
}


class ReadyBody(BaseModel):
    ready: bool
    backends: dict[str, bool] = Field(description="backend id → passed its last probe")
    stores: dict[str, bool] = Field(
        default_factory=dict,
        description="each concern held on Redis (jobs, keys, …) → its Redis answered PING just"
        " now; the embedded stores are not listed",
    )


# ``from``/``to`` of usage and reconciliation: an ISO 8601 date or date-time (UTC if no offset).
INSTANT: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "format": "date", "minLength": 1, "maxLength": 40},
        {"type": "string", "format": "date-time", "minLength": 1, "maxLength": 40},
    ]
}

# A report's [from, to) query parameters (GET /usage, /usage/dashboard, /usage/series).
FromInstant = Annotated[
    str | None, Query(alias="from", min_length=1, max_length=40, json_schema_extra=INSTANT)
]
ToInstant = Annotated[str | None, Query(min_length=1, max_length=40, json_schema_extra=INSTANT)]
INSTANT_OR_NULL: dict[str, Any] = {"anyOf": [*INSTANT["anyOf"], {"type": "null"}]}
# ``group_by`` of usage: ``model``, ``day``, both or neither, comma-separated (whitespace around
# a name allowed, as metering.queries.parse_group_by reads it).
GROUP_BY_PATTERN = r"^\s*((model|day)\s*)?(,\s*((model|day)\s*)?)*$"


class UsageAmounts(BaseModel):
    requests: int
    billable_requests: int
    gpu_seconds: float = Field(description="GPU-seconds of billable requests")
    cost: float
    cost_nanos: int = Field(description="the cost in billionths of the currency unit (exact)")
    unmetered_requests: int = Field(
        description="requests whose backend measured no GPU time (metered: false): their "
        "GPU-seconds are what the gateway attributed to them, never time queued in the backend"
    )
    unmetered_gpu_seconds: float = Field(
        description="billed GPU-seconds of those requests (included in gpu_seconds)"
    )


class UsageRow(UsageAmounts):
    model: str | None = None
    day: str | None = None


class BudgetState(BaseModel):
    month: str
    limit_gpu_seconds: float | None
    limit_cost: float | None
    spent_gpu_seconds: float
    spent_cost: float
    reserved_gpu_seconds: float


class UsageResponse(BaseModel):
    customer_id: str
    from_: str = Field(alias="from")
    to: str
    group_by: list[Literal["model", "day"]]
    currency: str
    totals: UsageAmounts
    rows: list[UsageRow]
    budget: BudgetState
    pending_records: int = Field(description="finished requests not yet in the usage store")
    lag_seconds: float


class ProofBundle(BaseModel):
    version: int
    log_public_key: str = Field(description="the log's verifier key (compare with the published)")
    checkpoint: str = Field(description="the signed checkpoint note (C2SP signed-note)")
    leaf: str = Field(description="the batch's log leaf (canonical JSON)")
    leaf_index: int
    log_proof: list[str] = Field(description="RFC 6962 inclusion proof of the leaf (base64)")
    row: str = Field(description="the request's attestation (canonical JSON)")
    row_index: int
    row_proof: list[str] = Field(description="inclusion proof of the row in its batch (base64)")


def exact_pass_through_bounds(app: FastAPI) -> None:
    """Make ``app``'s document carry PassThroughValue's bounds as exact integers.

    FastAPI's OpenAPI model holds ``minimum``/``maximum`` as doubles, and 2^63 - 1 is not one:
    it would be written 9.223372036854776e+18 (2^63), and a tool reading that as a decimal
    then takes 2^63 + 191 for valid, which the body guard refuses."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        document = build()
        if fresh:
            for branch in document["components"]["schemas"]["PassThroughValue"]["anyOf"]:
                if branch.get("type") in ("integer", "number"):
                    branch.update(minimum=PASS_THROUGH_MIN, maximum=PASS_THROUGH_MAX)
        return document

    app.openapi = openapi  # type: ignore[method-assign]

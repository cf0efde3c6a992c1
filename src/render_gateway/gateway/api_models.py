"""Request and response bodies of the public API (API.md), as pydantic models for OpenAPI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from render_gateway.generation import GenerationFields, Task


class QueueRequest(GenerationFields):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "modality": "image",
                    "family": "sd",
                    "model": "tiny",
                    "task": "t2i",
                    "prompt": "a lighthouse at dusk",
                    "seed": 42,
                    "steps": 4,
                }
            ]
        },
    )

    modality: Literal["image", "video"]
    family: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=128)
    task: Task
    format: str | None = Field(default=None, max_length=32)
    backend: str | None = Field(default=None, max_length=64)
    priority: Literal["high", "normal", "low"] = "normal"
    webhook: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    ttl: int | None = Field(default=None, ge=60, le=86400)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=64)


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


# ``from``/``to`` of usage and reconciliation: an ISO 8601 date or date-time (UTC if no offset).
INSTANT: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "format": "date", "minLength": 1, "maxLength": 40},
        {"type": "string", "format": "date-time", "minLength": 1, "maxLength": 40},
    ]
}
INSTANT_OR_NULL: dict[str, Any] = {"anyOf": [*INSTANT["anyOf"], {"type": "null"}]}


class UsageAmounts(BaseModel):
    requests: int
    billable_requests: int
    gpu_seconds: float = Field(description="GPU-seconds of billable requests")
    cost: float
    cost_nanos: int = Field(description="the cost in billionths of the currency unit (exact)")


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

"""The generation request body of the public contract (API.md), validated without I/O.

The gateway receives it from customers and forwards it, as JSON, inside the KServe v2 BYTES
input ``request``; the reference worker validates it again, since a backend trusts nobody.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from render_gateway.formats import Modality

Task = Literal["t2i", "i2i", "edit", "t2v", "i2v"]

TASK_MODALITY: dict[str, Modality] = {
    "t2i": "image",
    "i2i": "image",
    "edit": "image",
    "t2v": "video",
    "i2v": "video",
}

MAX_SEED = 2**32 - 1
# Unknown keys travel to the backend and are stored with every queued job (and shown in its
# GET /jobs/{id}): a few options' worth, not a payload. Images go in `image`/`mask`.
MAX_EXTRA_FIELDS_BYTES = 16 * 1024


def _json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (stdlib json: any int, unlike orjson's 64 bits)."""
    try:
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    except (RecursionError, ValueError, TypeError):
        return MAX_EXTRA_FIELDS_BYTES + 1  # nothing a backend option needs


class GenerationFields(BaseModel):
    """The generation fields a customer sends (API.md). Unknown keys are kept: they are passed
    to the backend untouched."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str | None = Field(default=None, max_length=2000)
    image: str | None = Field(
        default=None, min_length=1, description="https URL, data URI, or an asset URL"
    )
    mask: str | None = Field(default=None, min_length=1)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    steps: int | None = Field(default=None, ge=1, le=500)
    guidance: float | None = Field(default=None, ge=0, le=50)
    cfg: float | None = Field(default=None, ge=0, le=50)
    strength: float | None = Field(default=None, ge=0, le=1)
    count: int | None = Field(default=None, ge=1, le=4)
    duration: float | None = Field(default=None, ge=0.5, le=10)

    @model_validator(mode="after")
    def _extra_fields_are_small(self) -> GenerationFields:
        extra = self.model_extra or {}
        if not extra:
            return self
        sizes = {name: _json_size(value) + len(name) for name, value in extra.items()}
        total = sum(sizes.values())
        if total > MAX_EXTRA_FIELDS_BYTES:
            largest = sorted(sizes, key=sizes.__getitem__, reverse=True)[:3]
            names = ", ".join(repr(name[:64]) for name in largest)
            raise ValueError(
                f"unknown fields ({names}) take {total} bytes; at most "
                f"{MAX_EXTRA_FIELDS_BYTES} bytes of fields the API does not define are passed on"
            )
        return self


class GenerationRequest(GenerationFields):
    """What a backend receives: the fields plus the task and the output size, checked
    against each other."""

    model_config = ConfigDict(extra="allow", frozen=True)

    task: Task = "t2i"
    format: str | None = None
    width: int | None = Field(default=None, ge=1)
    height: int | None = Field(default=None, ge=1)

    @property
    def modality(self) -> Modality:
        return TASK_MODALITY[self.task]

    @property
    def extra_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _task_inputs_match(self) -> GenerationRequest:
        needs_image = self.task in ("i2i", "edit", "i2v")
        if needs_image and self.image is None:
            raise ValueError(f"task {self.task!r} needs an 'image'")
        if not needs_image and self.image is not None:
            raise ValueError(f"task {self.task!r} takes no 'image'")
        if self.task == "edit" and self.mask is None:
            raise ValueError("task 'edit' needs a 'mask'")
        if self.task != "edit" and self.mask is not None:
            raise ValueError(f"task {self.task!r} takes no 'mask'")
        if self.modality == "video" and self.count is not None:
            raise ValueError("'count' applies to images only")
        if self.modality == "image" and self.duration is not None:
            raise ValueError("'duration' applies to video only")
        if (self.width is None) != (self.height is None):
            raise ValueError("give both 'width' and 'height', or neither")
        if self.format is not None and self.width is not None:
            raise ValueError("give either 'format' or 'width'/'height', not both")
        return self


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, naming the field: what a 400 body's message carries."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "body"
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)

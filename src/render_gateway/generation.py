"""The generation request body of the public contract (API.md), validated without I/O.

The gateway receives it from customers and forwards it, as JSON, inside the KServe v2 BYTES
input ``request``; the reference worker validates it again, since a backend trusts nobody.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from typing_extensions import TypeAliasType

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


# Numbers in fields the API does not define: the signed 64-bit range the gateway's body guard
# keeps (gateway/http.py). JSON Schema counts 1e20 as an integer, so floats get the same bounds.
# (FastAPI writes bounds as doubles, 2^63 - 1 as 2^63: api_models.exact_pass_through_bounds
# puts the exact integers back in the document.)
PASS_THROUGH_MIN, PASS_THROUGH_MAX = -(2**63), 2**63 - 1


def _not_an_integer(value: Any) -> Any:
    """An integer is never read as a float here: that would change it, and could round it into
    the bounds (2^63 + 1 to 2^63 - 1024); integers are Int64's."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError("an integer outside the bounds of pass-through integers")
    return value


Int64 = Annotated[int, Field(ge=PASS_THROUGH_MIN, le=PASS_THROUGH_MAX)]
# pydantic compares a float with its bound as a float, and float(2^63 - 1) is 2^63: the float
# bound is the largest double not above 2^63 - 1 (the same set of doubles, compared exactly).
Number64 = Annotated[
    float, Field(ge=PASS_THROUGH_MIN, le=2**63 - 1024), BeforeValidator(_not_an_integer)
]

# A field the API does not define: any JSON value whose numbers fit in 64 bits, passed to the
# backend untouched. Recursive, so the document spells it once (``$ref``) for any depth.
PassThroughValue = TypeAliasType(
    "PassThroughValue",
    "Int64 | Number64 | str | bool | list[PassThroughValue] | dict[str, PassThroughValue] | None",
)


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
    # Unknown keys are validated too, so the document's ``additionalProperties`` is the truth.
    __pydantic_extra__: dict[str, PassThroughValue] = Field(init=False)

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


# The body of each task, for the document and the first check of a request: the fields a task
# takes none of may only be absent or null (null is read as absent). GenerationRequest checks
# the same rules again, with their own messages, wherever a request comes from.
_NO_IMAGE = "this task takes no image"
_NEEDS_IMAGE = "https URL, data:image/(png|jpeg|webp);base64 URI, or an asset URL of this gateway"


class T2IFields(GenerationFields):
    """t2i: prompt → image."""

    image: None = Field(default=None, description=_NO_IMAGE)
    mask: None = Field(default=None, description="only edit takes a mask")
    duration: None = Field(default=None, description="video only")


class I2IFields(GenerationFields):
    """i2i: prompt + image → image."""

    image: str = Field(min_length=1, description=_NEEDS_IMAGE)
    mask: None = Field(default=None, description="only edit takes a mask")
    duration: None = Field(default=None, description="video only")


class EditFields(GenerationFields):
    """edit: prompt + image + mask → image."""

    image: str = Field(min_length=1, description=_NEEDS_IMAGE)
    mask: str = Field(min_length=1, description=_NEEDS_IMAGE)
    duration: None = Field(default=None, description="video only")


class T2VFields(GenerationFields):
    """t2v: prompt → video."""

    image: None = Field(default=None, description=_NO_IMAGE)
    mask: None = Field(default=None, description="only edit takes a mask")
    count: None = Field(default=None, description="images only")


class I2VFields(GenerationFields):
    """i2v: prompt + image → video."""

    image: str = Field(min_length=1, description=_NEEDS_IMAGE)
    mask: None = Field(default=None, description="only edit takes a mask")
    count: None = Field(default=None, description="images only")


TASK_FIELDS: dict[Task, type[GenerationFields]] = {
    "t2i": T2IFields,
    "i2i": I2IFields,
    "edit": EditFields,
    "t2v": T2VFields,
    "i2v": I2VFields,
}


class GenerationRequest(GenerationFields):
    """What a backend receives: the fields plus the task and the output size, checked
    against each other."""

    model_config = ConfigDict(extra="allow", frozen=True)

    task: Task = "t2i"
    format: str | None = None
    width: int | None = Field(default=None, ge=1)
    height: int | None = Field(default=None, ge=1)
    # Intermediate images the backend sends while it runs (OpenAI's ``partial_images``), where
    # it can decode its latents; the device time they take is the run's, billed as such.
    previews: int | None = Field(default=None, ge=1, le=3)

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

"""OpenAI's video API shapes, translated to and from Render's async jobs, without I/O.

A video is a Render job of modality video (``JobCases``: submit, view, cancel): the OpenAI
``Video`` is a view of the job, its ``id`` the job id. This module says how a create body (JSON,
or the multipart form the ``openai`` client sends) becomes the job's ``SubmitRequest``, and how
a job becomes OpenAI's ``Video``, its list page and its deleted answer. docs/API.md lists every
field: what is supported, ignored or refused.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from render_gateway.api.openai_shapes import (
    FormUnreadable,
    UploadedFile,
    model_route,
    parse_size,
    read_form,
)
from render_gateway.application.job_cases import SubmitRequest
from render_gateway.core.jobs import Job, JobStatus
from render_gateway.formats import VIDEO_FORMATS
from render_gateway.generation import MAX_SEED

# Whole seconds, up to Render's longest clip (GenerationFields.duration: at most 10 s); the
# worker makes ``duration × fps`` frames. OpenAI offers 4, 8 and 12: 12 is refused.
MAX_SECONDS = 10
SECONDS = tuple(str(n) for n in range(1, MAX_SECONDS + 1))
DEFAULT_SECONDS = "4"  # OpenAI's default
VIDEO_SIZE_PATTERN = r"^[0-9]{1,5}x[0-9]{1,5}$"
# What a size or a length reads as when the request left it to the backend (a job made by the
# native API without ``duration``, or with no size and a model that has no default format).
LEFT_TO_THE_BACKEND = "auto"
VIDEO_FILE_FIELDS = ("input_reference",)

VideoStatus = Literal["queued", "in_progress", "completed", "failed"]
STATUS: dict[JobStatus, VideoStatus] = {
    JobStatus.queued: "queued",
    JobStatus.running: "in_progress",
    JobStatus.complete: "completed",
    JobStatus.error: "failed",
    JobStatus.cancelled: "failed",  # OpenAI has no cancelled status: error.code says cancelled
}


class VideoRequestInvalid(ValueError):
    """A create body this route cannot take; ``param`` names the field."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


class InputReference(BaseModel):
    """OpenAI's reference object. ``file_id`` names OpenAI's Files API, which Render has not."""

    model_config = ConfigDict(extra="forbid")

    image_url: str = Field(
        min_length=1, description="https URL, data:image/(png|jpeg|webp);base64 URI or asset URL"
    )


class VideoCreateFields(BaseModel):
    """``POST /v1/videos``: any other field is refused (400)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1, max_length=4000)
    seconds: str | None = None
    size: str | None = Field(default=None, pattern=VIDEO_SIZE_PATTERN)
    input_reference: InputReference | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)

    @field_validator("seconds", mode="before")
    @classmethod
    def _whole_seconds(cls, value: Any, info: ValidationInfo) -> Any:
        """ "4" (OpenAI's strings) or 4 (a JSON number), 1–10."""
        if value is None:
            return None
        number = _integer(value, info)
        text = str(number) if number is not None else value
        if text not in SECONDS:
            raise ValueError(
                f"{value!r} is not offered: whole seconds 1–{MAX_SECONDS} (Render's clips are "
                f"at most {MAX_SECONDS} s; OpenAI's 12 is not offered)"
            )
        return text

    @field_validator("seed", mode="before")
    @classmethod
    def _whole_number(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        number = _integer(value, info)
        if number is None:
            raise ValueError("an integer")
        return number


def _integer(value: Any, info: ValidationInfo) -> int | None:
    """An integer as JSON Schema reads one (7, or 7.0; never true), or form text ("7"); None
    for anything else (JSON text is not a number)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    form = isinstance(info.context, Mapping) and info.context.get("form")
    if form and isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _problems(exc: ValidationError) -> VideoRequestInvalid:
    first = ".".join(str(p) for p in exc.errors()[0]["loc"])
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "body"
        message = str(error["msg"]).removeprefix("Value error, ")
        if where == "input_reference.file_id":
            message = "Render has no Files API: upload the image, or give image_url"
        parts.append(f"{where}: {message}")
    return VideoRequestInvalid("; ".join(parts), first.split(".", 1)[0] or None)


def _nested(fields: Mapping[str, str]) -> dict[str, Any]:
    """Form text to the body's shape: ``input_reference[image_url]`` (how the openai client
    sends an object as form fields) becomes ``input_reference: {image_url}``."""
    body: dict[str, Any] = {}
    for name, value in fields.items():
        outer, bracket, inner = name.partition("[")
        if bracket and inner.endswith("]") and outer == "input_reference":
            body.setdefault(outer, {})[inner[:-1]] = value
        else:
            body[name] = value
    return body


def read_video_create(content_type: str, body: bytes) -> tuple[VideoCreateFields, str | None]:
    """The create fields and the reference image as a ``data:`` URI or URL (None: t2v), from a
    JSON body or a multipart form; VideoRequestInvalid naming what is wrong."""
    image: str | None = None
    try:
        kind = content_type.lower()
        if kind.startswith("application/json"):
            # JSON's types are the document's (a seed is a number, not text: _integer).
            fields = VideoCreateFields.model_validate_json(body or b"null")
        elif not kind.startswith("multipart/form-data"):
            raise VideoRequestInvalid(
                "send the body as JSON (application/json) or multipart/form-data", None
            )
        else:
            form = read_form(content_type, body, VIDEO_FILE_FIELDS)
            uploads = form.files.get("input_reference", [])
            fields = VideoCreateFields.model_validate(_nested(form.fields), context={"form": True})
            if len(uploads) > 1 or (uploads and fields.input_reference is not None):
                raise VideoRequestInvalid(
                    "input_reference: send one image, as a file or as image_url",
                    "input_reference",
                )
            if uploads:
                image = _data_uri(uploads[0])
    except ValidationError as exc:
        raise _problems(exc) from exc
    except FormUnreadable as exc:
        raise VideoRequestInvalid(str(exc), exc.param) from exc
    if fields.input_reference is not None:
        image = fields.input_reference.image_url
    return fields, image


def _data_uri(upload: UploadedFile) -> str:
    return f"data:{upload.content_type};base64,{base64.b64encode(upload.data).decode()}"


def video_generation(fields: VideoCreateFields, image: str | None) -> tuple[str, dict[str, Any]]:
    """The task (i2v with a reference image, t2v without) and its generation fields."""
    generation: dict[str, Any] = {
        "prompt": fields.prompt,
        "duration": float(fields.seconds or DEFAULT_SECONDS),
    }
    if fields.seed is not None:
        generation["seed"] = fields.seed
    if image is None:
        return "t2v", generation
    return "i2v", {**generation, "image": image}


def submit_request(
    fields: VideoCreateFields,
    task: str,
    generation: dict[str, Any],
    idempotency_key: str | None,
) -> SubmitRequest:
    """The async tier's request for a video (asset inputs in ``generation`` already admitted):
    normal priority, no webhook, no ttl; ``size`` as an explicit width × height."""
    family, model = model_route(fields.model)
    # "Same key, same body?" is asked of what was sent (the seed drawn later is not in it).
    digest = {
        "openai": "videos",
        **orjson.loads(fields.model_dump_json()),
        "generation": generation,
    }
    return SubmitRequest(
        modality="video",
        family=family,
        model=model,
        task=task,
        format=None,
        backend=None,
        priority="normal",
        webhook=None,
        ttl=None,
        idempotency_key=idempotency_key,
        generation=generation,
        digest_source=digest,
        size=parse_size(fields.size),
    )


def _seconds(generation: Mapping[str, Any]) -> str:
    duration = generation.get("duration")
    if not isinstance(duration, int | float) or isinstance(duration, bool):
        return LEFT_TO_THE_BACKEND
    return str(int(duration)) if float(duration).is_integer() else str(duration)


def _size(request: Mapping[str, Any], generation: Mapping[str, Any]) -> str:
    width, height = generation.get("width"), generation.get("height")
    if isinstance(width, int) and isinstance(height, int):
        return f"{width}x{height}"
    named = VIDEO_FORMATS.get(str(request.get("format")))
    return f"{named[0]}x{named[1]}" if named else LEFT_TO_THE_BACKEND


def percent(status: JobStatus, progress: float) -> int:
    """0–100 from the run's step progress: 100 only once the video is there."""
    if status is JobStatus.complete:
        return 100
    if status is JobStatus.queued:
        return 0
    return max(0, min(99, round(progress * 100)))


def video_object(job: Job, progress: float) -> dict[str, Any]:
    """OpenAI's ``Video`` for a video job; ``progress`` is the run's, 0–1."""
    request = job.request
    generation = request.get("generation")
    generation = generation if isinstance(generation, Mapping) else {}
    error = None
    if job.status in (JobStatus.error, JobStatus.cancelled):
        error = (
            {"code": job.error.code, "message": job.error.message}
            if job.error is not None
            else {"code": "cancelled", "message": "the job was cancelled"}
        )
    ended = job.status.terminal and job.completed_at is not None
    return {
        "id": job.id,
        "object": "video",
        "status": STATUS[job.status],
        "progress": percent(job.status, progress),
        "created_at": int(job.created_at),
        "completed_at": int(job.completed_at) if ended and job.completed_at else None,
        "expires_at": None,  # outputs are kept; their signed URLs expire, the bytes do not
        "model": f"{request.get('family')}/{request.get('model')}",
        "prompt": generation.get("prompt"),
        "remixed_from_video_id": None,
        "seconds": _seconds(generation),
        "size": _size(request, generation),
        "error": error,
    }


def video_list(videos: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's cursor page: the next page is ``after=last_id`` while ``has_more``."""
    return {
        "object": "list",
        "data": list(videos),
        "first_id": videos[0]["id"] if videos else None,
        "last_id": videos[-1]["id"] if videos else None,
        "has_more": has_more,
    }


def video_deleted(video_id: str, deleted: bool) -> dict[str, Any]:
    return {"id": video_id, "object": "video.deleted", "deleted": deleted}


# ---- the shapes, for the OpenAPI document


class OpenAIVideoError(BaseModel):
    code: str
    message: str


class OpenAIVideo(BaseModel):
    id: str = Field(description="the Render job id (`GET /jobs/{id}` shows the same job)")
    object: Literal["video"] = "video"
    status: VideoStatus
    progress: int = Field(ge=0, le=100, description="from the run's denoising steps")
    created_at: int
    completed_at: int | None
    expires_at: None = Field(description="always null: outputs are kept")
    model: str = Field(description="`family/model`")
    prompt: str | None
    remixed_from_video_id: None
    seconds: str = Field(description="whole seconds, or `auto` when the backend chose")
    size: str = Field(description="`WIDTHxHEIGHT`, or `auto` when the backend chose")
    error: OpenAIVideoError | None


class OpenAIVideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIVideo]
    first_id: str | None
    last_id: str | None
    has_more: bool


class OpenAIVideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = Field(description="true: it was queued or running and is cancelled")


_TEXT = {"type": "string"}
_COMMON_FIELDS: dict[str, Any] = {
    "model": {**_TEXT, "minLength": 1, "maxLength": 200,
              "description": "`family/model` or an alias (GET /v1/models)"},
    "prompt": {**_TEXT, "minLength": 1, "maxLength": 4000},
    "size": {**_TEXT, "pattern": VIDEO_SIZE_PATTERN,
             "description": "`WIDTHxHEIGHT` within the model's side limits; absent: its default"},
}  # fmt: skip
_SEED = {"type": "integer", "minimum": 0, "maximum": MAX_SEED, "description": "Render's extension"}
_SECONDS_TEXT = {"enum": list(SECONDS), "description": "whole seconds; default 4"}
VIDEO_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        "model": _COMMON_FIELDS["model"],
        "prompt": _COMMON_FIELDS["prompt"],
        "size": {"anyOf": [_COMMON_FIELDS["size"], {"type": "null"}]},
        "seconds": {"anyOf": [_SECONDS_TEXT, {"type": "integer", "minimum": 1,
                                              "maximum": MAX_SECONDS}, {"type": "null"}]},
        "input_reference": {
            "anyOf": [
                {"type": "object", "required": ["image_url"], "additionalProperties": False,
                 "properties": {"image_url": {**_TEXT, "minLength": 1}}},
                {"type": "null"},
            ],
            "description": "the reference image (task i2v); `file_id` is refused",
        },
        "seed": {"anyOf": [_SEED, {"type": "null"}]},
    },
    "additionalProperties": False,
}  # fmt: skip
VIDEO_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        **_COMMON_FIELDS,
        "seconds": _SECONDS_TEXT,
        "input_reference": {"type": "string", "format": "binary",
                            "description": "PNG, JPEG or WebP: the reference image (task i2v)"},
        "input_reference[image_url]": {**_TEXT, "minLength": 1,
                                       "description": "instead of the file: its URL"},
        "seed": _SEED,
    },
    "additionalProperties": False,
}  # fmt: skip

"""OpenAI's image API shapes, translated to and from Render's own terms, without I/O.

The OpenAI-compatible routes (openai_routes.py) run the same use case as the sync tier
(``RunNow``); this module only says how an OpenAI body becomes a ``SyncRequest``, how the
result becomes OpenAI's ``ImagesResponse``, the catalog OpenAI's model list, and an error
OpenAI's ``{"error": {"message", "type", "param", "code"}}``. docs/API.md lists every field.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from render_gateway.application.sync_run import SyncRequest, SyncResult
from render_gateway.catalog import RUNNABLE, CatalogModel
from render_gateway.generation import MAX_SEED

OPENAI_PREFIX = "/v1/"
SIZE_PATTERN = r"^(auto|[0-9]{1,5}x[0-9]{1,5})$"
_SIZE = re.compile(SIZE_PATTERN)


class ImageGenerationBody(BaseModel):
    """``POST /v1/images/generations``. Any other field is refused (400); so is a value this
    gateway cannot honour (``stream: true``, ``background: transparent``, another
    ``output_format``), rather than silently answering something else."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1, max_length=200, description="`family/model` or an alias (GET /v1/models)"
    )
    prompt: str = Field(min_length=1, max_length=4000)
    n: int | None = Field(default=None, ge=1, le=4, description="images to make (Render: 1–4)")
    size: str | None = Field(
        default=None,
        pattern=SIZE_PATTERN,
        description="`WIDTHxHEIGHT` within the model's side limits, or `auto` (the model's"
        " default size)",
    )
    quality: Literal["auto", "standard", "hd", "low", "medium", "high"] | None = Field(
        default=None, description="accepted and ignored: steps follow the model's defaults"
    )
    response_format: Literal["url", "b64_json"] | None = Field(
        default=None, description="default `b64_json`; `url`: a signed, expiring asset URL"
    )
    output_format: Literal["png"] | None = Field(default=None, description="PNG only")
    background: Literal["auto", "opaque"] | None = Field(
        default=None, description="`transparent` is refused: outputs are opaque"
    )
    moderation: Literal["auto", "low"] | None = Field(
        default=None, description="accepted and ignored"
    )
    style: Literal["vivid", "natural"] | None = Field(
        default=None, description="accepted and ignored"
    )
    user: str | None = Field(default=None, max_length=256, description="accepted and ignored")
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Render's extension: the seed to run"
    )
    stream: bool | None = Field(
        default=None,
        description="true: a text/event-stream: `image_generation.partial_image` events while "
        "it runs (with partial_images), then one `image_generation.completed` per image",
    )
    partial_images: int | None = Field(
        default=None, ge=0, le=3,
        description="with stream: this many intermediate images, decoded from the run's real "
        "latents at steps spread over the run, where the backend can preview (the reference "
        "worker's image models); a backend that cannot sends none, and only completed comes",
    )  # fmt: skip


# Why a refused value is refused, in the 400's message (the schema says the same in words).
REFUSED_BECAUSE = {
    "output_format": "output_format: only 'png' is produced",
    "background": "background: outputs are opaque; 'transparent' is not offered",
    "output_compression": "output_compression: applies to jpeg/webp only; outputs are PNG",
    "variant": "variant: only 'video' is produced (no thumbnail or spritesheet)",
}


class OpenAIImage(BaseModel):
    b64_json: str | None = None
    url: str | None = None


class OpenAIImageUsage(BaseModel):
    """OpenAI's fields are token counts, which Render does not bill: they are 0, and
    ``gpu_seconds`` is what was billed (the ``X-GPU-Seconds`` header)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: dict[str, int] = Field(default_factory=dict)
    gpu_seconds: float | None = None
    metered: bool = True


class OpenAIImagesResponse(BaseModel):
    created: int
    data: list[OpenAIImage]
    output_format: Literal["png"] = "png"
    size: str | None = None
    usage: OpenAIImageUsage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail


class SizeUnreadable(ValueError):
    pass


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``"WxH"`` → (W, H); ``"auto"`` or absent → None (the model's default size)."""
    if size is None or size == "auto":
        return None
    if not _SIZE.match(size):
        raise SizeUnreadable(f"size: {size!r} is not 'WIDTHxHEIGHT' or 'auto'")
    width, height = size.split("x")
    return int(width), int(height)


def model_route(model_id: str) -> tuple[str, str]:
    """``family/model`` (or an ``org/name`` alias, which the catalog resolves) → its two parts;
    an id with no slash becomes a name no catalog entry has (a 404 naming what exists)."""
    family, _, model = model_id.partition("/")
    return family, model


def generation_request(body: ImageGenerationBody) -> SyncRequest:
    """The sync tier's request for an OpenAI image generation (task t2i)."""
    family, model = model_route(body.model)
    generation: dict[str, Any] = {"prompt": body.prompt, **previews_of(body)}
    if body.n is not None:
        generation["count"] = body.n
    if body.seed is not None:
        generation["seed"] = body.seed
    return SyncRequest(
        "image", family, model, "t2i", None, None, generation, size=parse_size(body.size)
    )


def previews_of(body: ImageGenerationBody | ImageEditFields) -> dict[str, int]:
    """The backend's ``previews`` for OpenAI's ``partial_images`` (only when streaming)."""
    return {"previews": body.partial_images} if body.stream and body.partial_images else {}


def image_event(
    kind: str, image: bytes, created: int, fields: Mapping[str, Any], size: str | None,
    **more: Any,
) -> bytes:  # fmt: skip
    """One ``image_generation.<kind>`` SSE event (OpenAI's streaming shape), image inline."""
    event = {
        "type": f"image_generation.{kind}",
        "b64_json": base64.b64encode(image).decode(),
        "created_at": created,
        "size": size or "auto",
        "quality": fields.get("quality") or "auto",
        "background": fields.get("background") or "auto",
        "output_format": "png",
        **more,
    }
    return f"event: image_generation.{kind}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"


def partial_image_event(
    preview: bytes, index: int, created: int, fields: Mapping[str, Any], size: str | None
) -> bytes:
    return image_event("partial_image", preview, created, fields, size, partial_image_index=index)


def error_event(code: str, message: str) -> bytes:
    """A stream's ``error`` event: a run that fails after its first partial image, when the
    answer's status (200) is already sent."""
    event = {
        "type": "error",
        "error": {
            "type": "invalid_request_error" if code.startswith("invalid") else "server_error",
            "code": code,
            "message": message,
            "param": None,
        },
    }
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


def images_response(
    result: SyncResult, created: int, response_format: str | None, base_url: str, size: str | None
) -> dict[str, Any]:
    """OpenAI's ``ImagesResponse`` for a sync result: every output, inline (``b64_json``, the
    default) or as its signed asset URL made absolute on ``base_url``."""
    if response_format == "url":
        data = [{"url": base_url.rstrip("/") + url} for url in result.asset_urls]
    else:
        data = [{"b64_json": base64.b64encode(output).decode()} for output in result.outputs]
    usage = OpenAIImageUsage(
        input_tokens_details={"text_tokens": 0, "image_tokens": 0},
        gpu_seconds=result.gpu_seconds,
        metered=result.metered,
    )
    return {
        "created": created,
        "data": data,
        "output_format": "png",
        "size": size if size not in (None, "auto") else None,
        "usage": usage.model_dump(),
    }


def completed_events(
    result: SyncResult, created: int, fields: Mapping[str, Any], size: str | None
) -> bytes:
    """``stream: true``: one SSE ``image_generation.completed`` event per image (OpenAI's
    streaming shape; always inline), the usage on each."""
    usage = OpenAIImageUsage(
        input_tokens_details={"text_tokens": 0, "image_tokens": 0},
        gpu_seconds=result.gpu_seconds,
        metered=result.metered,
    ).model_dump()
    frames = [
        image_event("completed", output, created, fields, size, usage=usage)
        for output in result.outputs
    ]
    return b"".join(frames)


def model_id(entry: CatalogModel) -> str:
    return f"{entry.family}/{entry.model}"


def model_list(models: Iterable[CatalogModel], created: int) -> dict[str, Any]:
    """OpenAI's model list: every runnable catalog model, named ``family/model``."""
    return {
        "object": "list",
        "data": [model_entry(entry, created) for entry in models if entry.status in RUNNABLE],
    }


def model_entry(entry: CatalogModel, created: int) -> dict[str, Any]:
    return {"id": model_id(entry), "object": "model", "created": created, "owned_by": "render"}


ERROR_TYPES = {
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    429: "rate_limit_error",
}
# The request field a refusal is about, where its code says which.
PARAM_OF_CODE = {
    "model_not_found": "model",
    "backend_not_found": "model",
    "size_not_offered": "size",
    "format_not_offered": "size",
}


def _parameter(field: str) -> str:
    """A validation problem's field as the request names it: ``query.limit`` is ``limit``."""
    where, dot, name = field.partition(".")
    return name if dot and where in ("query", "path", "header") else field


def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error(
    status: int, code: str, message: str, details: Mapping[str, Any]
) -> dict[str, Any]:
    """A Render error (status, code, message, details) in OpenAI's shape. ``param`` is the
    field the error is about when known; a refused field's message says why it is refused."""
    param = details.get("field") if isinstance(details.get("field"), str) else None
    problems = details.get("problems")
    if isinstance(problems, list) and problems and isinstance(problems[0], Mapping):
        field = _parameter(str(problems[0].get("field", "")))
        param = field or None
        reasons = [REFUSED_BECAUSE[f] for p in problems
                   if (f := _parameter(str(p.get("field", "")))) in REFUSED_BECAUSE]  # fmt: skip
        if reasons:
            message = "; ".join(dict.fromkeys(reasons))
    param = param or PARAM_OF_CODE.get(code)
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX)


# ---- POST /v1/images/edits (multipart/form-data) ----

IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
EDIT_FILE_FIELDS = ("image", "image[]", "mask")


class FormUnreadable(ValueError):
    """A body that is not the multipart form this route takes; the message says why."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class UploadedFile:
    content_type: str
    data: bytes


@dataclass(frozen=True)
class EditForm:
    fields: dict[str, str]
    files: dict[str, list[UploadedFile]]


def _media_type(data: bytes) -> str | None:
    """The image type from the bytes themselves (the part's declared type is not trusted)."""
    for magic, media in IMAGE_TYPES.items():
        if data.startswith(magic):
            return media
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def read_edit_form(content_type: str, body: bytes) -> EditForm:
    """The parts of an image edit's form: files are ``image``/``image[]``/``mask``."""
    return read_form(content_type, body, EDIT_FILE_FIELDS)


def read_form(content_type: str, body: bytes, file_fields: Iterable[str]) -> EditForm:
    """The parts of a ``multipart/form-data`` body (stdlib email parser: the gateway has no
    multipart dependency): the parts named in ``file_fields`` are images (a ``name[]`` one is
    filed under ``name``), the rest text fields."""
    file_fields = frozenset(file_fields)
    if (
        not content_type.lower().startswith("multipart/form-data")
        or "boundary=" not in content_type
    ):
        raise FormUnreadable("send the body as multipart/form-data (with a boundary)")
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body,
        policy=email.policy.HTTP,
    )
    if not message.is_multipart():
        raise FormUnreadable("the multipart body could not be read")
    fields: dict[str, str] = {}
    files: dict[str, list[UploadedFile]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise FormUnreadable("a form part has no name")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if name in file_fields:
            media = _media_type(data)
            if media is None:
                raise FormUnreadable(f"{name}: not a PNG, JPEG or WebP image", name.rstrip("[]"))
            files.setdefault(name.removesuffix("[]"), []).append(UploadedFile(media, data))
        else:
            if name in fields:
                raise FormUnreadable(f"{name}: given twice", name)
            try:
                fields[name] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FormUnreadable(f"{name}: not UTF-8 text", name) from exc
    return EditForm(fields, files)


class ImageEditFields(BaseModel):
    """The text fields of ``POST /v1/images/edits``: those of a generation that apply, read
    from form text (``"2"`` is 2). Anything else is refused (400)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1, max_length=4000)
    n: int | None = Field(default=None, ge=1, le=4)
    size: str | None = Field(default=None, pattern=SIZE_PATTERN)
    quality: Literal["auto", "standard", "hd", "low", "medium", "high"] | None = None
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png"] | None = None
    background: Literal["auto", "opaque"] | None = None
    user: str | None = Field(default=None, max_length=256)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stream: bool | None = None
    partial_images: int | None = Field(default=None, ge=0, le=3)
    input_fidelity: Literal["low", "high"] | None = None


def _data_uri(upload: UploadedFile) -> str:
    return f"data:{upload.content_type};base64,{base64.b64encode(upload.data).decode()}"


def edit_request(fields: ImageEditFields, files: Mapping[str, list[UploadedFile]]) -> SyncRequest:
    """The sync tier's request for an OpenAI image edit: task ``edit`` with a mask, ``i2i``
    without. Render's tasks take one image: more → FormUnreadable."""
    images = files.get("image", [])
    if len(images) != 1:
        raise FormUnreadable(
            "image: send exactly one image (Render's edit and i2i take one)", "image"
        )
    masks = files.get("mask", [])
    if len(masks) > 1:
        raise FormUnreadable("mask: send at most one mask", "mask")
    family, model = model_route(fields.model)
    generation: dict[str, Any] = {
        "prompt": fields.prompt, "image": _data_uri(images[0]), **previews_of(fields)
    }  # fmt: skip
    task = "i2i"
    if masks:
        generation["mask"] = _data_uri(masks[0])
        task = "edit"
    if fields.n is not None:
        generation["count"] = fields.n
    if fields.seed is not None:
        generation["seed"] = fields.seed
    return SyncRequest(
        "image", family, model, task, None, None, generation, size=parse_size(fields.size)
    )

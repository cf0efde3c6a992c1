"""The OpenAI translation on its own: bodies to the sync tier's request, results and the catalog
to OpenAI's shapes, Render's errors to OpenAI's error."""

from __future__ import annotations

import base64

import orjson
import pytest
from pydantic import ValidationError

from render_gateway.api.openai_shapes import (
    FormUnreadable,
    ImageEditFields,
    ImageGenerationBody,
    SizeUnreadable,
    completed_events,
    edit_request,
    generation_request,
    images_response,
    model_list,
    openai_error,
    parse_size,
    read_edit_form,
)
from render_gateway.application.refusals import RateInfo
from render_gateway.application.sync_run import SyncResult
from render_gateway.catalog import CatalogModel

RATE = RateInfo(10, 9, 1)


def test_a_generation_becomes_the_sync_tiers_t2i_request() -> None:
    body = ImageGenerationBody(model="sd/tiny", prompt="a fox", n=2, size="96x64", seed=3)
    request = generation_request(body)
    assert (request.modality, request.family, request.model, request.task) == (
        "image", "sd", "tiny", "t2i",
    )  # fmt: skip
    assert request.generation == {"prompt": "a fox", "count": 2, "seed": 3}
    assert request.size == (96, 64) and request.format is None
    auto = generation_request(ImageGenerationBody(model="org/name", prompt="p", size="auto"))
    assert (auto.family, auto.model, auto.size, auto.generation) == (
        "org", "name", None, {"prompt": "p"},
    )  # fmt: skip
    assert generation_request(ImageGenerationBody(model="noslash", prompt="p")).model == ""


def test_sizes() -> None:
    assert parse_size("1024x768") == (1024, 768)
    assert parse_size("auto") is None and parse_size(None) is None
    with pytest.raises(SizeUnreadable):
        parse_size("1024*768")


@pytest.mark.parametrize(
    "fields",
    [{"stream": "maybe"}, {"output_format": "webp"}, {"background": "transparent"}, {"n": 5},
     {"partial_images": 4}, {"size": "10 x 10"}, {"unknown": 1}, {"prompt": ""}],
)  # fmt: skip
def test_unsupported_values_and_unknown_fields_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ImageGenerationBody.model_validate({"model": "sd/tiny", "prompt": "a fox", **fields})


def test_accepted_and_ignored_fields() -> None:
    body = ImageGenerationBody.model_validate(
        {"model": "m/x", "prompt": "p", "quality": "hd", "style": "vivid", "user": "u",
         "moderation": "low", "stream": False, "partial_images": 0, "output_format": "png",
         "background": "opaque"},
    )  # fmt: skip
    assert generation_request(body).generation == {"prompt": "p"}


def test_stream_events_one_completed_per_image() -> None:
    result = SyncResult(RATE, outputs=(b"one", b"two"), asset_urls=("/a", "/b"), gpu_seconds=1.0)
    frames = completed_events(result, 7, {"quality": "hd"}, "64x64").decode().split("\n\n")
    assert frames[-1] == "" and len(frames) == 3
    for frame, data in zip(frames[:2], (b"one", b"two"), strict=True):
        event_line, data_line = frame.split("\n")
        assert event_line == "event: image_generation.completed"
        event = orjson.loads(data_line.removeprefix("data: "))
        assert event["type"] == "image_generation.completed" and event["created_at"] == 7
        assert base64.b64decode(event["b64_json"]) == data
        assert (event["size"], event["quality"], event["background"]) == ("64x64", "hd", "auto")
        assert event["usage"]["gpu_seconds"] == 1.0


def test_images_response_inline_or_as_absolute_urls() -> None:
    result = SyncResult(
        RATE, outputs=(b"one", b"two"), asset_urls=("/assets/a_1?s=x", "/assets/a_2?s=y"),
        gpu_seconds=0.25, metered=False,
    )  # fmt: skip
    inline = images_response(result, 100, None, "http://h:1/", "64x64")
    assert [base64.b64decode(d["b64_json"]) for d in inline["data"]] == [b"one", b"two"]
    assert inline["created"] == 100 and inline["size"] == "64x64"
    assert inline["usage"]["gpu_seconds"] == 0.25 and inline["usage"]["metered"] is False
    assert inline["usage"]["total_tokens"] == 0
    urls = images_response(result, 100, "url", "http://h:1/", "auto")
    assert urls["data"] == [
        {"url": "http://h:1/assets/a_1?s=x"},
        {"url": "http://h:1/assets/a_2?s=y"},
    ]
    assert urls["size"] is None


def test_model_list_names_runnable_models_family_slash_model() -> None:
    models = [
        CatalogModel("image", "sd", "tiny", ("t2i",)),
        CatalogModel("video", "wan", "soon", ("t2v",), status="coming_soon"),
        CatalogModel("video", "wan", "old", ("t2v",), status="deprecated"),
    ]
    listed = model_list(models, 42)
    assert listed["object"] == "list"
    assert listed["data"] == [
        {"id": "sd/tiny", "object": "model", "created": 42, "owned_by": "render"},
        {"id": "wan/old", "object": "model", "created": 42, "owned_by": "render"},
    ]


def test_errors_in_openai_shape() -> None:
    assert openai_error(401, "invalid_api_key", "bad key", {}) == {
        "error": {"message": "bad key", "type": "authentication_error", "param": None,
                  "code": "invalid_api_key"},
    }  # fmt: skip
    assert openai_error(404, "model_not_found", "no", {"known": []})["error"]["param"] == "model"
    assert openai_error(429, "rate_limited", "slow", {})["error"]["type"] == "rate_limit_error"
    assert openai_error(402, "budget_exceeded", "$", {})["error"]["type"] == "insufficient_quota"
    assert openai_error(503, "no_capacity", "busy", {})["error"]["type"] == "server_error"
    png_only = openai_error(
        400, "invalid_request", "output_format: Input should be 'png'",
        {"problems": [{"field": "output_format", "message": "Input should be 'png'"}]},
    )["error"]  # fmt: skip
    assert png_only["param"] == "output_format"
    assert png_only["message"] == "output_format: only 'png' is produced"
    other = openai_error(
        400, "invalid_request", "n: too big", {"problems": [{"field": "n", "message": "big"}]}
    )["error"]
    assert other == {"message": "n: too big", "type": "invalid_request_error", "param": "n",
                     "code": "invalid_request"}  # fmt: skip


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[str, bytes]:
    boundary = "XyZ"
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
        )
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks) + b"--XyZ--\r\n"


PNG = b"\x89PNG\r\n\x1a\n" + b"rest"


def test_an_edit_form_becomes_edit_with_a_mask_and_i2i_without() -> None:
    content_type, body = _multipart(
        [("model", None, b"sd/tiny"), ("prompt", None, "a d\u00f6or".encode()), ("n", None, b"2"),
         ("image[]", "a.png", PNG), ("mask", "m.png", PNG)]
    )  # fmt: skip
    form = read_edit_form(content_type, body)
    assert form.fields == {"model": "sd/tiny", "prompt": "a d\u00f6or", "n": "2"}
    request = edit_request(ImageEditFields.model_validate(form.fields), form.files)
    assert request.task == "edit" and request.generation["count"] == 2
    assert request.generation["image"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert request.generation["mask"] == request.generation["image"]
    no_mask = read_edit_form(*_multipart([("image", "a.png", PNG)]))
    fields = ImageEditFields(model="sd/tiny", prompt="p")
    assert edit_request(fields, no_mask.files).task == "i2i"


@pytest.mark.parametrize(
    ("content_type", "body", "says"),
    [
        ("application/json", b"{}", "multipart/form-data"),
        ("multipart/form-data; boundary=XyZ", b"garbage", "could not be read"),
        (*_multipart([("image", "a.txt", b"text")]), "not a PNG"),
        (*_multipart([("prompt", None, b"a"), ("prompt", None, b"b")]), "given twice"),
        (*_multipart([("prompt", None, b"\xff\xfe")]), "not UTF-8"),
    ],
)
def test_unreadable_forms_are_refused(content_type: str, body: bytes, says: str) -> None:
    with pytest.raises(FormUnreadable, match=says):
        read_edit_form(content_type, body)


def test_an_edit_takes_exactly_one_image() -> None:
    two = read_edit_form(*_multipart([("image[]", "a.png", PNG), ("image[]", "b.png", PNG)]))
    with pytest.raises(FormUnreadable, match="exactly one"):
        edit_request(ImageEditFields(model="m/x", prompt="p"), two.files)
    with pytest.raises(FormUnreadable, match="exactly one"):
        edit_request(ImageEditFields(model="m/x", prompt="p"), {})

"""OpenAI's video shapes without I/O: a create body to the job's SubmitRequest, a job to the
``Video`` (every status, progress, seconds and size read back from the stored request)."""

from __future__ import annotations

from typing import Any

import pytest

from render_gateway.api.openai_video_shapes import (
    VideoRequestInvalid,
    percent,
    read_video_create,
    submit_request,
    video_generation,
    video_list,
    video_object,
)
from render_gateway.core.jobs import Job, JobError, JobStatus
from render_gateway.core.lanes import Lane

BOUNDARY = "b0undary"


def form(parts: dict[str, str | bytes]) -> tuple[str, bytes]:
    body = b""
    for name, value in parts.items():
        if isinstance(value, bytes):
            head = f'Content-Disposition: form-data; name="{name}"; filename="f"\r\n'
            body += f"--{BOUNDARY}\r\n{head}Content-Type: image/png\r\n\r\n".encode() + value
        else:
            head = f'Content-Disposition: form-data; name="{name}"\r\n\r\n'
            body += f"--{BOUNDARY}\r\n{head}".encode() + value.encode()
        body += b"\r\n"
    return f"multipart/form-data; boundary={BOUNDARY}", body + f"--{BOUNDARY}--\r\n".encode()


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 8


def test_a_form_becomes_a_t2v_or_i2v_submit_request() -> None:
    fields, image = read_video_create(
        *form({"model": "sd/clip", "prompt": "waves", "seconds": "8", "size": "128x64"})
    )
    task, generation = video_generation(fields, image)
    assert (task, generation) == ("t2v", {"prompt": "waves", "duration": 8.0})
    request = submit_request(fields, task, generation, "key-1")
    assert (request.modality, request.family, request.model) == ("video", "sd", "clip")
    assert request.size == (128, 64) and request.format is None
    assert request.idempotency_key == "key-1" and request.priority == "normal"

    fields, image = read_video_create(
        *form({"model": "org/alias", "prompt": "p", "input_reference": PNG, "seed": "7"})
    )
    task, generation = video_generation(fields, image)
    assert task == "i2v" and generation["image"].startswith("data:image/png;base64,")
    assert generation["duration"] == 4.0 and generation["seed"] == 7  # OpenAI's default length
    assert submit_request(fields, task, generation, None).size is None


def test_json_is_read_strictly_and_seconds_may_be_a_number() -> None:
    fields, image = read_video_create(
        "application/json",
        b'{"model": "sd/clip", "prompt": "p", "seconds": 2, "input_reference": '
        b'{"image_url": "https://example.com/a.png"}}',
    )
    assert fields.seconds == "2" and image == "https://example.com/a.png"
    for body, param in [
        (b'{"model": "m", "prompt": "p", "seed": "7"}', "seed"),
        (b'{"model": "m", "prompt": "p", "seconds": 12}', "seconds"),
        (b'{"model": "m", "prompt": "p", "seconds": true}', "seconds"),
        (b'{"model": "m", "prompt": "p", "input_reference": {"file_id": "f"}}',
         "input_reference"),
        (b'{"prompt": "p"}', "model"),
        (b"[]", None),
    ]:  # fmt: skip
        with pytest.raises(VideoRequestInvalid) as caught:
            read_video_create("application/json", body)
        assert caught.value.param == param, (body, str(caught.value))


def test_one_reference_image_only() -> None:
    with pytest.raises(VideoRequestInvalid, match="one image") as caught:
        read_video_create(
            *form({"model": "m", "prompt": "p", "input_reference": PNG,
                   "input_reference[image_url]": "https://example.com/a.png"})
        )  # fmt: skip
    assert caught.value.param == "input_reference"
    with pytest.raises(VideoRequestInvalid, match="not a PNG") as caught:
        read_video_create(*form({"model": "m", "prompt": "p", "input_reference": b"GIF89a"}))
    assert caught.value.param == "input_reference"


def job(status: JobStatus, **changes: Any) -> Job:
    request = {"modality": "video", "family": "sd", "model": "clip", "task": "t2v",
               "format": None, "generation": {"prompt": "w", "duration": 4.0,
                                              "width": 64, "height": 96}}  # fmt: skip
    base = Job(id="j_x", customer_id="c", lane=Lane.normal, request=request,
               created_at=100.7, status=status)  # fmt: skip
    return base.evolve(**changes)


@pytest.mark.parametrize(
    ("status", "progress", "expected"),
    [
        (JobStatus.queued, 0.5, ("queued", 0)),
        (JobStatus.running, 0.0, ("in_progress", 0)),
        (JobStatus.running, 0.5, ("in_progress", 50)),
        (JobStatus.running, 1.0, ("in_progress", 99)),  # 100 only once the video is there
        (JobStatus.complete, 0.0, ("completed", 100)),
        (JobStatus.error, 0.25, ("failed", 25)),
        (JobStatus.cancelled, 0.75, ("failed", 75)),
    ],
)
def test_status_and_progress(status: JobStatus, progress: float, expected: tuple[str, int]) -> None:
    video = video_object(job(status), progress)
    assert (video["status"], video["progress"]) == expected
    assert percent(status, progress) == expected[1]


def test_the_video_reads_back_the_stored_request() -> None:
    video = video_object(job(JobStatus.complete, completed_at=110.2), 1.0)
    assert video == {
        "id": "j_x", "object": "video", "status": "completed", "progress": 100,
        "created_at": 100, "completed_at": 110, "expires_at": None, "model": "sd/clip",
        "prompt": "w", "remixed_from_video_id": None, "seconds": "4", "size": "64x96",
        "error": None,
    }  # fmt: skip
    native = job(JobStatus.running)
    native.request["format"] = "480p"
    native.request["generation"] = {"prompt": "w", "duration": 1.5}
    video = video_object(native, 0.1)
    assert (video["seconds"], video["size"], video["completed_at"]) == ("1.5", "832x480", None)
    native.request.update(format=None, generation={"prompt": "w"})
    assert (video_object(native, 0)["seconds"], video_object(native, 0)["size"]) == (
        "auto", "auto",
    )  # fmt: skip


def test_errors_and_cancels_are_failed_with_their_code() -> None:
    error = JobError("model_error", "the model failed on this request", False)
    failed = video_object(job(JobStatus.error, error=error, completed_at=101.0), 0.5)
    assert failed["error"] == {"code": "model_error", "message": error.message}
    cancelled = video_object(job(JobStatus.cancelled, completed_at=101.0), 0)
    assert cancelled["error"] == {"code": "cancelled", "message": "the job was cancelled"}
    assert cancelled["completed_at"] == 101


def test_list_page() -> None:
    assert video_list([], False) == {"object": "list", "data": [], "first_id": None,
                                     "last_id": None, "has_more": False}  # fmt: skip
    page = video_list([{"id": "a"}, {"id": "b"}], True)
    assert (page["first_id"], page["last_id"], page["has_more"]) == ("a", "b", True)


def test_a_body_neither_json_nor_a_form_is_refused() -> None:
    with pytest.raises(VideoRequestInvalid, match=r"JSON .* or multipart/form-data"):
        read_video_create("text/plain", b"model=m")


def test_integers_as_json_schema_reads_them() -> None:
    """7.0 is an integer to JSON Schema (and so to the document's fuzzers); text is not, in
    JSON; in a form, everything is text."""
    fields, _ = read_video_create(
        "application/json", b'{"model": "m", "prompt": "p", "seconds": 2.0, "seed": 181.0}'
    )
    assert (fields.seconds, fields.seed) == ("2", 181)
    for body in (b'{"model": "m", "prompt": "p", "seed": 1.5}',
                 b'{"model": "m", "prompt": "p", "seed": true}'):  # fmt: skip
        with pytest.raises(VideoRequestInvalid):
            read_video_create("application/json", body)
    fields, _ = read_video_create(*form({"model": "m", "prompt": "p", "seed": "9"}))
    assert fields.seed == 9

"""The backend output convention: outputs picked by name, values folded in, types sniffed."""

from __future__ import annotations

import struct

import pytest

from render_gateway.inference.backend import BackendError
from render_gateway.inference.kserve_client import error_fields, generate_response, loads_lenient
from render_gateway.inference.media_types import sniff_media_type
from render_gateway.inference.outputs import (
    OutputPlan,
    OutputPlans,
    is_progress,
    plan_outputs,
    progress_values,
    read_result,
    to_progress,
)
from render_gateway.kserve import codec

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def meta(*names: str) -> dict[str, object]:
    return {
        "name": "m",
        "outputs": [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in names],
    }


def test_plan_asks_for_the_media_output_and_the_values_the_model_declares() -> None:
    assert plan_outputs(None, meta("gpu_seconds", "images", "seed")).requested == (
        "images",
        "gpu_seconds",
        "seed",
    )
    assert plan_outputs(None, meta("video")).requested == ("video",)
    assert plan_outputs("picture", meta("picture", "usage_claim")).requested == (
        "picture",
        "usage_claim",
    )
    assert plan_outputs(None, meta("out0", "gpu_seconds")).media == "out0"
    assert plan_outputs(None, None) == OutputPlan(None)  # unknown: ask for nothing by name


def test_result_takes_the_named_output_whatever_its_position() -> None:
    """Issue 13: a gpu_seconds output listed first broke "outputs[0]"."""
    response = codec.InferResponse(
        "m",
        (
            codec.Tensor("gpu_seconds", "FP64", (1,), struct.pack("<d", 0.25)),
            codec.Tensor("seed", "INT64", (1,), [7]),
            codec.Tensor("usage_claim", "BYTES", (1,), [b'{"claim": 1}']),
            codec.Tensor("images", "BYTES", (1,), [PNG]),
        ),
    )
    result = read_result(response, OutputPlan(None), "req_1")
    assert result.outputs == [PNG] and result.content_type == "image/png"
    assert result.gpu_seconds == 0.25 and result.parameters["seed"] == 7
    assert result.usage_claim == '{"claim": 1}'


def test_a_response_parameter_wins_over_an_output_and_a_declared_type_over_the_bytes() -> None:
    response = codec.InferResponse(
        "m",
        (
            codec.Tensor("images", "BYTES", (1,), [PNG], {"content_type": "image/x-test"}),
            codec.Tensor("gpu_seconds", "FP64", (1,), [9.0]),
        ),
        parameters={"gpu_seconds": 0.5},
    )
    result = read_result(response, OutputPlan("images", ("gpu_seconds",)), "req_2")
    assert result.gpu_seconds == 0.5 and result.content_type == "image/x-test"


def test_missing_or_non_bytes_media_output_is_a_final_protocol_error() -> None:
    response = codec.InferResponse("m", (codec.Tensor("images", "FP32", (1,), [1.0]),))
    with pytest.raises(BackendError) as wrong_type:
        read_result(response, OutputPlan("images"), "req_3")
    assert wrong_type.value.code == "backend_protocol" and not wrong_type.value.retriable
    with pytest.raises(BackendError, match="without the output 'video'"):
        read_result(response, OutputPlan("video"), "req_3")


def test_progress_responses_are_those_without_the_media_output() -> None:
    step = codec.InferResponse(
        "m",
        (codec.Tensor("step", "INT64", (1,), [3]), codec.Tensor("steps", "INT64", (1,), [4])),
    )
    assert is_progress(step, OutputPlan("images"))
    event = to_progress(progress_values(step))
    assert (event.step, event.steps, event.progress) == (3, 4, 0.75)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PNG, "image/png"),
        (b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"\x00\x00\x00\x18ftypisom\x00", "video/mp4"),
        (b"\x1a\x45\xdf\xa3\x01", "video/webm"),
        (b"GIF89a..", "image/gif"),
        (b"plain text", None),
        (b"", None),
    ],
)
def test_media_type_sniffing(data: bytes, expected: str | None) -> None:
    assert sniff_media_type(data) == expected


def test_triton_generate_answer_keeps_raw_bytes_that_are_not_utf8() -> None:
    """Triton's generate_stream writes a BYTES output's raw bytes into its JSON (issue 13: a
    UnicodeDecodeError on the PNG)."""
    raw = PNG + bytes(range(256))
    # The JSON holds bytes >= 0x80 as they are (not UTF-8); quotes, backslashes and
    # control bytes escaped, as a JSON writer does.
    body = (
        b'{"model_name":"m","model_version":"1","seed":[7],"images":"'
        + b"".join(
            bytes([b])
            if b >= 0x80 or (b >= 0x20 and b not in (0x22, 0x5C))
            else (b"\\" + bytes([b]) if b in (0x22, 0x5C) else b"\\u%04x" % b)
            for b in raw
        )
        + b'"}'
    )
    response = generate_response(loads_lenient(body))
    result = read_result(response, OutputPlan(None), "req_4")
    assert result.outputs == [raw] and result.parameters["seed"] == 7
    assert result.content_type == "image/png"


def test_error_bodies_of_render_triton_and_kserve() -> None:
    assert error_fields('{"error": "bad prompt", "code": "invalid_request", "message": "m"}') == (
        "invalid_request",
        "m",
    )
    assert error_fields('{"error": "busy", "message": "all slots taken"}') == (
        "busy",
        "all slots taken",
    )
    assert error_fields('{"error": "unexpected inference input \'x\'"}') == (
        "backend_error",
        "unexpected inference input 'x'",
    )
    assert error_fields("not json") == ("backend_error", "not json")


async def test_a_model_without_metadata_is_asked_again_only_after_a_while() -> None:
    asked: list[str] = []

    async def no_metadata(model: str) -> None:
        asked.append(model)

    plans = OutputPlans(None, no_metadata, retry_seconds=60)
    assert await plans.plan("m") == OutputPlan(None)
    assert await plans.plan("m") == OutputPlan(None)
    assert asked == ["m"]  # not one metadata request per run
    plans.learned("m", meta("images", "gpu_seconds"))
    assert (await plans.plan("m")).requested == ("images", "gpu_seconds")

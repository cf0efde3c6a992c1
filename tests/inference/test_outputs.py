"""The backend output convention: outputs picked by name, values folded in, types sniffed."""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

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
from render_gateway.kserve import codec, grpc_codec

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


_NAMES = st.sampled_from(
    ["images", "gpu_seconds", "seed", "usage_claim", "step", "steps", "progress", "x"]
)
_PARAMS = st.dictionaries(
    st.sampled_from(["gpu_seconds", "seed", "step", "steps", "progress", "content_type", "x"]),
    st.one_of(
        st.booleans().map(lambda v: ("bool_param", v)),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: ("int64_param", v)),
        st.integers(0, 2**64 - 1).map(lambda v: ("uint64_param", v)),
        st.floats().map(lambda v: ("double_param", v)),  # NaN and infinities included
        st.text(max_size=5).map(lambda v: ("string_param", v)),
    ),
    max_size=4,
)
_OUTPUTS = st.lists(
    st.tuples(
        _NAMES,
        st.sampled_from([*sorted(codec.DATATYPES), "BF17", ""]),
        st.lists(st.integers(0, 4), max_size=2),
        st.binary(max_size=24),
        _PARAMS,
    ),
    max_size=3,
)


def _set(params: Any, values: dict[str, tuple[str, object]]) -> None:
    for key, (field, value) in values.items():
        setattr(params[key], field, value)


@settings(max_examples=300, deadline=None)
@given(
    outputs=_OUTPUTS,
    raw=st.booleans(),
    params=_PARAMS,
    plan=st.sampled_from([OutputPlan(None), OutputPlan("images", ("gpu_seconds", "seed"))]),
)
def test_any_grpc_answer_is_a_result_progress_or_a_protocol_error(
    outputs: list[Any], raw: bool, params: dict[str, tuple[str, object]], plan: OutputPlan
) -> None:
    """Whatever a backend puts in a ModelInferResponse: a storable result, a progress event
    within bounds, or ProtocolError/BackendError — never another exception."""
    message = pb.ModelInferResponse(model_name="demo")
    for name, datatype, shape, data, output_params in outputs:
        _set(
            message.outputs.add(name=name, datatype=datatype, shape=shape).parameters, output_params
        )
        if raw:
            message.raw_output_contents.append(data)
    _set(message.parameters, params)
    try:
        response = grpc_codec.response_from_proto(message)
        if is_progress(response, plan):
            progress = to_progress(progress_values(response))
            assert progress.step >= 0 and 0.0 <= progress.progress <= 1.0
            assert progress.gpu_seconds is None or math.isfinite(progress.gpu_seconds)
            return
        result = read_result(response, plan, "req_fuzz")
    except (codec.ProtocolError, BackendError):
        return
    assert result.outputs and all(result.outputs)
    assert result.gpu_seconds is None or math.isfinite(result.gpu_seconds)
    orjson.dumps({"id": result.request_id, **result.parameters})

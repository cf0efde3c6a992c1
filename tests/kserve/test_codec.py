"""KServe v2 codec: JSON and binary-extension round trips, and every malformed message refused."""

from __future__ import annotations

import base64
import re
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from render_gateway.kserve.codec import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    ProtocolError,
    RequestedOutput,
    Tensor,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    pack_bytes_elements,
    parse_header_length,
    split_body,
    unpack_bytes_elements,
)

# ------------------------------------------------------------------------------------ helpers


def _body(header: dict[str, Any], binary: bytes = b"") -> tuple[bytes, int | None]:
    head = orjson.dumps(header)
    if not binary:
        return head, None
    return head + binary, len(head)


def _decode_inputs(inputs: list[Any], binary: bytes = b"", **extra: Any) -> InferRequest:
    body, length = _body({"inputs": inputs, **extra}, binary)
    return decode_request(body, length)


def _bytes_input(name: str = "request", **overrides: Any) -> dict[str, Any]:
    return {"name": name, "datatype": "BYTES", "shape": [1], "data": ["hi"], **overrides}


# ---------------------------------------------------------------------------- request round trip


def test_json_request_round_trip_keeps_everything() -> None:
    request = InferRequest(
        inputs=(
            Tensor("request", "BYTES", (1,), [b'{"prompt": "a cat"}']),
            Tensor("scale", "FP32", (2, 2), [0.5, 1.0, -2.25, 3.0]),
        ),
        id="req_abc",
        parameters={"priority": 3, "tag": "x", "flag": True, "ratio": 0.25},
        outputs=(RequestedOutput("image", binary=True), RequestedOutput("mask", binary=False)),
    )
    body, header_length = encode_request(request)
    assert header_length is None
    assert orjson.loads(body)["inputs"][1]["data"] == [0.5, 1.0, -2.25, 3.0]
    assert decode_request(body, header_length) == request


def test_binary_request_round_trip_returns_header_length() -> None:
    raw_fp32 = struct.pack("<3f", 1.0, 2.5, -4.0)
    request = InferRequest(
        inputs=(
            Tensor("request", "BYTES", (2,), [b"\x00\xff\x10", b""]),
            Tensor("values", "FP32", (3,), raw_fp32),
        ),
        id="r1",
    )
    body, header_length = encode_request(request, binary_inputs=True)
    assert isinstance(header_length, int)
    assert 0 < header_length < len(body)
    header = orjson.loads(body[:header_length])
    sizes = [t["parameters"]["binary_data_size"] for t in header["inputs"]]
    assert sizes == [4 + 3 + 4 + 0, 12]
    assert "data" not in header["inputs"][0]
    assert body[header_length:] == pack_bytes_elements([b"\x00\xff\x10", b""]) + raw_fp32
    decoded = decode_request(body, header_length)
    assert decoded == request
    assert decoded.input("values").data == raw_fp32
    assert "binary_data_size" not in decoded.input("values").parameters


def test_binary_encoding_drops_content_encoding() -> None:
    tensor = Tensor("img", "BYTES", (1,), [b"\x89PNG"], {"content_encoding": "base64"})
    body, header_length = encode_request(InferRequest(inputs=(tensor,)), binary_inputs=True)
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert header["inputs"][0]["parameters"] == {"binary_data_size": 8}
    assert decode_request(body, header_length).input("img").data == [b"\x89PNG"]


@given(elements=st.lists(st.binary(), min_size=1, max_size=8))
def test_bytes_elements_round_trip_binary(elements: list[bytes]) -> None:
    request = InferRequest(inputs=(Tensor("blob", "BYTES", (len(elements),), elements),))
    body, header_length = encode_request(request, binary_inputs=True)
    assert header_length is not None
    assert decode_request(body, header_length).input("blob").data == elements


@given(elements=st.lists(st.binary(), min_size=1, max_size=8))
def test_bytes_elements_round_trip_json_base64(elements: list[bytes]) -> None:
    tensor = Tensor("blob", "BYTES", (len(elements),), elements, {"content_encoding": "base64"})
    body, header_length = encode_request(InferRequest(inputs=(tensor,)))
    assert header_length is None
    wire = orjson.loads(body)["inputs"][0]
    assert wire["data"] == [base64.b64encode(e).decode() for e in elements]
    assert decode_request(body).input("blob") == tensor


@given(elements=st.lists(st.binary(), max_size=8))
def test_pack_unpack_bytes_elements(elements: list[bytes]) -> None:
    assert unpack_bytes_elements(pack_bytes_elements(elements), "t") == elements


def test_json_bytes_without_encoding_are_utf8_text() -> None:
    request = _decode_inputs([_bytes_input(data=["héllo"])])
    assert request.input("request").data == ["héllo".encode()]


def test_json_nested_data_is_flattened() -> None:
    request = _decode_inputs(
        [{"name": "m", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]
    )
    assert request.input("m").data == [1, 2, 3, 4]
    assert request.input("m").element_count == 4


def test_input_lookup_missing_name() -> None:
    request = _decode_inputs([_bytes_input()])
    with pytest.raises(ProtocolError, match="'nope' is missing"):
        request.input("nope")


# ---------------------------------------------------------------------------- response round trip


def _response() -> InferResponse:
    return InferResponse(
        model_name="demo",
        model_version="1",
        id="req_1",
        outputs=(
            Tensor(
                "image",
                "BYTES",
                (2,),
                [b"\x89PNG\r\n\x1a\n\x00", b"\xff\xd8"],
                {"content_type": "image/png", "content_encoding": "base64"},
            ),
            Tensor("score", "FP32", (1,), [0.75]),
        ),
        parameters={"gpu_seconds": 1.5, "status": "complete", "seed": 7},
    )


def test_json_response_round_trip() -> None:
    response = _response()
    body, header_length = encode_response(response)
    assert header_length is None
    assert decode_response(body) == response


def test_binary_response_round_trip_only_named_outputs_binary() -> None:
    response = _response()
    body, header_length = encode_response(response, frozenset({"image"}))
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    image, score = header["outputs"]
    assert "data" not in image
    assert image["parameters"] == {"content_type": "image/png", "binary_data_size": 4 + 9 + 4 + 2}
    assert score["data"] == [0.75]
    decoded = decode_response(body, header_length)
    assert decoded.output("image").data == list(response.output("image").data)
    assert decoded.output("image").parameters == {"content_type": "image/png"}
    assert decoded.output("score") == response.output("score")
    assert decoded.parameters == response.parameters
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("demo", "1", "req_1")


def test_binary_numeric_response_size_is_checked() -> None:
    header = {
        "model_name": "m",
        "outputs": [
            {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}}
        ],
    }
    body, length = _body(header, b"\x00" * 4)
    with pytest.raises(ProtocolError, match="wants 8 bytes, got 4"):
        decode_response(body, length)


def test_response_output_lookup_missing() -> None:
    with pytest.raises(ProtocolError, match="'nope' is missing"):
        _response().output("nope")


def test_response_trailing_binary_bytes() -> None:
    body, length = encode_response(_response(), frozenset({"image"}))
    assert length is not None
    with pytest.raises(ProtocolError, match="1 bytes after the last binary output"):
        decode_response(body + b"!", length)


def test_response_model_name_required() -> None:
    with pytest.raises(ProtocolError, match="model_name"):
        decode_response(orjson.dumps({"outputs": []}))


def test_encoding_numeric_json_from_raw_bytes_is_refused() -> None:
    request = InferRequest(inputs=(Tensor("v", "FP32", (1,), b"\x00" * 4),))
    with pytest.raises(ProtocolError, match="must be a list"):
        encode_request(request)


def test_encoding_numeric_binary_from_list_is_refused() -> None:
    request = InferRequest(inputs=(Tensor("v", "FP32", (1,), [1.0]),))
    with pytest.raises(ProtocolError, match="must be raw bytes"):
        encode_request(request, binary_inputs=True)


# ------------------------------------------------------------------------------- wants_binary


def test_wants_binary_per_output_flag() -> None:
    request = _decode_inputs(
        [_bytes_input()],
        outputs=[
            {"name": "image", "parameters": {"binary_data": True}},
            {"name": "video", "parameters": {"binary_data": False}},
            {"name": "plain"},
        ],
    )
    assert request.wants_binary("image") is True
    assert request.wants_binary("video") is False
    assert request.wants_binary("plain") is False
    assert request.wants_binary("unlisted") is False


def test_wants_binary_request_level_default() -> None:
    request = _decode_inputs(
        [_bytes_input()],
        parameters={"binary_data_output": True},
        outputs=[{"name": "image", "parameters": {"binary_data": False}}],
    )
    assert request.wants_binary("anything") is True
    # A per-output flag wins over the request-level default.
    assert request.wants_binary("image") is False


# ------------------------------------------------------------------------------- error cases


def test_body_not_json() -> None:
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode_request(b"{not json")


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42", b"null"])
def test_body_json_not_object(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        decode_request(body)


@pytest.mark.parametrize("header", [{}, {"inputs": []}, {"inputs": {}}, {"inputs": None}])
def test_missing_or_empty_inputs(header: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError, match="'inputs' must be a non-empty list"):
        decode_request(orjson.dumps(header))


def test_duplicate_input_names() -> None:
    with pytest.raises(ProtocolError, match="'request' appears twice"):
        _decode_inputs([_bytes_input(), _bytes_input()])


@pytest.mark.parametrize("datatype", ["FLOAT", "fp32", "STRING", None, 3])
def test_unknown_datatype(datatype: Any) -> None:
    with pytest.raises(ProtocolError, match="unknown datatype"):
        _decode_inputs([_bytes_input(datatype=datatype)])


@pytest.mark.parametrize("shape", [[-1], [], [1.0], [True], ["1"], None, 1, [1, -2]])
def test_bad_shape(shape: Any) -> None:
    with pytest.raises(ProtocolError, match="'shape' must be a non-empty list"):
        _decode_inputs([_bytes_input(shape=shape)])


def test_missing_name() -> None:
    with pytest.raises(ProtocolError, match="'name' must be a non-empty string"):
        _decode_inputs([{"datatype": "BYTES", "shape": [1], "data": ["x"]}])


def test_json_element_count_mismatch() -> None:
    with pytest.raises(ProtocolError, match=r"shape \[3\] wants 3 elements, got 2"):
        _decode_inputs([{"name": "v", "datatype": "FP32", "shape": [3], "data": [1.0, 2.0]}])


def test_json_numeric_data_must_be_numbers() -> None:
    with pytest.raises(ProtocolError, match="FP32 data must be numbers"):
        _decode_inputs([{"name": "v", "datatype": "FP32", "shape": [1], "data": ["1"]}])


def test_json_bytes_elements_must_be_strings() -> None:
    with pytest.raises(ProtocolError, match="must be strings"):
        _decode_inputs([_bytes_input(data=[5])])


def test_json_data_missing() -> None:
    with pytest.raises(ProtocolError, match="'data' is missing"):
        _decode_inputs([{"name": "v", "datatype": "FP32", "shape": [1]}])


def test_binary_bytes_element_count_mismatch() -> None:
    blob = pack_bytes_elements([b"a", b"b"])
    tensor = {
        "name": "blob",
        "datatype": "BYTES",
        "shape": [3],
        "parameters": {"binary_data_size": len(blob)},
    }
    with pytest.raises(ProtocolError, match=r"shape \[3\] wants 3 elements, got 2"):
        _decode_inputs([tensor], blob)


def test_binary_numeric_size_mismatch() -> None:
    tensor = {
        "name": "v",
        "datatype": "INT64",
        "shape": [2],
        "parameters": {"binary_data_size": 8},
    }
    with pytest.raises(ProtocolError, match="INT64 wants 16 bytes, got 8"):
        _decode_inputs([tensor], b"\x01" * 8)


def test_binary_data_size_runs_past_body() -> None:
    tensor = {
        "name": "v",
        "datatype": "UINT8",
        "shape": [10],
        "parameters": {"binary_data_size": 10},
    }
    with pytest.raises(ProtocolError, match=r"runs past the binary section \(4 bytes left\)"):
        _decode_inputs([tensor], b"\x00" * 4)


@pytest.mark.parametrize("size", [-1, 1.5, "4", True])
def test_binary_data_size_must_be_non_negative_int(size: Any) -> None:
    tensor = {
        "name": "v",
        "datatype": "UINT8",
        "shape": [4],
        "parameters": {"binary_data_size": size},
    }
    with pytest.raises(ProtocolError, match="'binary_data_size' must be a non-negative integer"):
        _decode_inputs([tensor], b"\x00" * 4)


def test_extra_trailing_binary_bytes() -> None:
    request = InferRequest(inputs=(Tensor("v", "UINT8", (2,), b"\x01\x02"),))
    body, length = encode_request(request, binary_inputs=True)
    assert length is not None
    assert decode_request(body, length).input("v").data == b"\x01\x02"
    with pytest.raises(ProtocolError, match="3 bytes after the last binary input"):
        decode_request(body + b"xyz", length)


def test_binary_section_without_binary_tensors() -> None:
    with pytest.raises(ProtocolError, match="bytes after the last binary input"):
        _decode_inputs([_bytes_input()], b"junk")


def test_truncated_bytes_length_prefix() -> None:
    blob = pack_bytes_elements([b"ab"]) + b"\x01\x00"  # a second prefix cut to two bytes
    tensor = {
        "name": "blob",
        "datatype": "BYTES",
        "shape": [2],
        "parameters": {"binary_data_size": len(blob)},
    }
    with pytest.raises(ProtocolError, match="truncated BYTES length prefix at byte 6"):
        _decode_inputs([tensor], blob)


def test_bytes_element_runs_past_its_data() -> None:
    blob = struct.pack("<I", 100) + b"short"
    tensor = {
        "name": "blob",
        "datatype": "BYTES",
        "shape": [1],
        "parameters": {"binary_data_size": len(blob)},
    }
    with pytest.raises(ProtocolError, match="element of 100 bytes runs past its data"):
        _decode_inputs([tensor], blob)


@pytest.mark.parametrize("decode", [decode_request, decode_response])
def test_header_length_larger_than_body(decode: Any) -> None:
    body = orjson.dumps({"inputs": [_bytes_input()]})
    with pytest.raises(ProtocolError, match=f"{HEADER_LENGTH} is {len(body) + 1} but the body"):
        decode(body, len(body) + 1)


def test_header_length_negative() -> None:
    body = orjson.dumps({"inputs": [_bytes_input()]})
    with pytest.raises(ProtocolError, match=f"{HEADER_LENGTH} is -1"):
        split_body(body, -1)


def test_header_length_cutting_the_json() -> None:
    body = orjson.dumps({"inputs": [_bytes_input()]})
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode_request(body, len(body) - 1)


@pytest.mark.parametrize("value", ["abc", "", "12.5", "0x10", "1_0", " 12 ", "+5", "-3", "١٢"])
def test_parse_header_length_not_integer(value: str) -> None:
    expected = f"{HEADER_LENGTH} must be a non-negative integer, got {value!r}"
    with pytest.raises(ProtocolError, match=re.escape(expected)):
        parse_header_length(value)


def test_parse_header_length_valid() -> None:
    assert parse_header_length(None) is None
    assert parse_header_length("123") == 123
    assert parse_header_length("0") == 0


def test_data_and_binary_data_size_both_present() -> None:
    tensor = {
        "name": "v",
        "datatype": "UINT8",
        "shape": [1],
        "data": [1],
        "parameters": {"binary_data_size": 1},
    }
    with pytest.raises(ProtocolError, match="has both 'data' and 'binary_data_size'"):
        _decode_inputs([tensor], b"\x01")


@pytest.mark.parametrize("value", [[1], {"a": 1}, None])
def test_tensor_parameters_must_be_scalars(value: Any) -> None:
    with pytest.raises(ProtocolError, match="parameter 'p' must be a bool, number or string"):
        _decode_inputs([_bytes_input(parameters={"p": value})])


def test_request_parameters_must_be_scalars() -> None:
    with pytest.raises(ProtocolError, match="request: parameter 'p' must be"):
        _decode_inputs([_bytes_input()], parameters={"p": [1, 2]})


def test_parameters_must_be_object() -> None:
    with pytest.raises(ProtocolError, match="'parameters' must be an object"):
        _decode_inputs([_bytes_input(parameters=[1])])


def test_response_parameters_must_be_scalars() -> None:
    body = orjson.dumps({"model_name": "m", "outputs": [], "parameters": {"claim": {"a": 1}}})
    with pytest.raises(ProtocolError, match="response: parameter 'claim' must be"):
        decode_response(body)


@pytest.mark.parametrize("text", ["not base64!", "abc", "YWJj\n"])
def test_invalid_base64(text: str) -> None:
    tensor = _bytes_input(data=[text], parameters={"content_encoding": "base64"})
    with pytest.raises(ProtocolError, match="invalid base64"):
        _decode_inputs([tensor])


def test_id_must_be_string() -> None:
    with pytest.raises(ProtocolError, match="'id' must be a string"):
        _decode_inputs([_bytes_input()], id=5)


@pytest.mark.parametrize("outputs", [{"name": "x"}, [{"binary_data": True}], ["image"]])
def test_bad_requested_outputs(outputs: Any) -> None:
    with pytest.raises(ProtocolError, match="outputs"):
        _decode_inputs([_bytes_input()], outputs=outputs)

"""KServe v2 gRPC messages to and from the transport-free types."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from render_gateway.kserve import codec, grpc_codec

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)


@given(
    elements=st.lists(st.binary(max_size=64), min_size=1, max_size=4),
    params=st.dictionaries(st.text(min_size=1, max_size=8), scalars, max_size=4),
)
def test_response_round_trip(elements: list[bytes], params: dict[str, codec.Scalar]) -> None:
    response = codec.InferResponse(
        "m",
        (
            codec.Tensor("images", "BYTES", (len(elements),), elements),
            codec.Tensor("gpu_seconds", "FP64", (1,), [0.125]),
        ),
        model_version="1",
        id="req_1",
        parameters=params,
    )
    wire = pb.ModelInferResponse.FromString(
        grpc_codec.response_to_proto(response).SerializeToString()
    )
    back = grpc_codec.response_from_proto(wire)
    assert back.outputs[0].data == elements
    assert back.outputs[1].data == struct.pack("<d", 0.125)
    assert back.parameters == params and back.id == "req_1" and back.model_version == "1"


def test_request_round_trip_with_requested_outputs() -> None:
    request = codec.InferRequest(
        inputs=(codec.Tensor("request", "BYTES", (1,), [b'{"prompt": "x"}']),),
        id="req_2",
        outputs=(codec.RequestedOutput("images", True), codec.RequestedOutput("seed", True)),
    )
    back = grpc_codec.request_from_proto(grpc_codec.request_to_proto("m", request))
    assert back.input("request").data == [b'{"prompt": "x"}']
    assert [o.name for o in back.outputs] == ["images", "seed"] and back.id == "req_2"


def test_typed_contents_are_read_too() -> None:
    message = pb.ModelInferResponse(model_name="m")
    out = message.outputs.add(name="seed", datatype="INT64", shape=[1])
    out.contents.int64_contents.append(7)
    image = message.outputs.add(name="images", datatype="BYTES", shape=[1])
    image.contents.bytes_contents.append(b"\x89PNG")
    back = grpc_codec.response_from_proto(message)
    assert back.output("seed").data == [7] and back.output("images").data == [b"\x89PNG"]


@pytest.mark.parametrize(
    ("shape", "raw", "match"),
    [
        ([2], struct.pack("<I", 1) + b"a", "wants 2 elements"),
        ([1], struct.pack("<I", 9) + b"a", "runs past"),
        ([-1], b"", "negative dimension"),
    ],
)
def test_malformed_raw_contents_are_protocol_errors(
    shape: list[int], raw: bytes, match: str
) -> None:
    message = pb.ModelInferResponse(model_name="m")
    message.outputs.add(name="images", datatype="BYTES", shape=shape)
    message.raw_output_contents.append(raw)
    with pytest.raises(codec.ProtocolError, match=match):
        grpc_codec.response_from_proto(message)


def test_raw_contents_must_be_one_per_tensor() -> None:
    message = pb.ModelInferResponse(model_name="m")
    message.outputs.add(name="a", datatype="BYTES", shape=[1])
    message.outputs.add(name="b", datatype="BYTES", shape=[1])
    message.raw_output_contents.append(struct.pack("<I", 0))
    with pytest.raises(codec.ProtocolError, match="one each"):
        grpc_codec.response_from_proto(message)

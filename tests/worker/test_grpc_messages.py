"""KServe v2 gRPC messages to and from the codec's types, and worker errors as gRPC statuses."""

from __future__ import annotations

import grpc
import pytest
from tritonclient.grpc import service_pb2

from render_gateway.kserve import codec, grpc_codec
from render_gateway.worker import grpc_messages as messages
from render_gateway.worker.errors import ApiError


def _request(shape: list[int], raw: list[bytes] | None = None) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="demo", id="req_1")
    request.inputs.add(name="request", datatype="BYTES", shape=shape)
    request.parameters["binary_data_output"].bool_param = True
    if raw is not None:
        request.raw_input_contents.extend(raw)
    return request


def test_raw_bytes_input_becomes_a_codec_request() -> None:
    raw = codec.pack_bytes_elements([b'{"prompt": "x"}'])
    decoded = grpc_codec.request_from_proto(_request([1], [raw]))
    tensor = decoded.input("request")
    assert (tensor.datatype, tensor.shape, tensor.data) == ("BYTES", (1,), [b'{"prompt": "x"}'])
    assert decoded.id == "req_1" and decoded.parameters == {"binary_data_output": True}


@pytest.mark.parametrize(
    ("shape", "raw", "says"),
    [
        ([2], [codec.pack_bytes_elements([b"{}"])], "wants 2 elements, got 1"),
        ([1], [b"\x05\x00\x00\x00ab"], "runs past its data"),
        ([1], [b"a", b"b"], "1 inputs but 2 raw contents"),
        ([1], None, "wants 1 elements, got 0"),
        ([-1], None, "negative dimension"),
    ],
)
def test_malformed_requests_say_what_is_wrong(
    shape: list[int], raw: list[bytes] | None, says: str
) -> None:
    with pytest.raises(codec.ProtocolError, match=says):
        grpc_codec.request_from_proto(_request(shape, raw))


def test_response_outputs_are_raw_and_parameters_typed() -> None:
    response = codec.InferResponse(
        model_name="demo",
        model_version="1",
        id="req_1",
        outputs=(
            codec.Tensor(
                "images",
                "BYTES",
                (2,),
                [b"ab", b"c"],
                {"content_type": "image/png", "content_encoding": "base64"},
            ),
        ),
        parameters={"gpu_seconds": 0.5, "seed": 7, "status": "complete", "metered": True},
    )
    message = grpc_codec.response_to_proto(response, {"triton_final_response": True})
    assert message.raw_output_contents[0] == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    output = message.outputs[0]
    assert list(output.shape) == [2] and dict(output.parameters).keys() == {"content_type"}
    assert grpc_codec.parameters_from_proto(message.parameters) == {
        "gpu_seconds": 0.5,
        "seed": 7,
        "status": "complete",
        "metered": True,
        "triton_final_response": True,
    }


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "invalid_request", grpc.StatusCode.INVALID_ARGUMENT),
        (404, "model_not_found", grpc.StatusCode.NOT_FOUND),
        (409, "duplicate_request", grpc.StatusCode.ALREADY_EXISTS),
        (409, "cancelled", grpc.StatusCode.CANCELLED),
        (413, "payload_too_large", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (500, "run_failed", grpc.StatusCode.INTERNAL),
        (503, "busy", grpc.StatusCode.UNAVAILABLE),
        (418, "odd", grpc.StatusCode.INTERNAL),
    ],
)
def test_errors_map_to_grpc_statuses(status: int, code: str, expected: grpc.StatusCode) -> None:
    assert messages.status_of(ApiError(status, code, "text")) == expected

"""KServe v2 gRPC messages (``tritonclient.grpc.service_pb2``) to and from the ``codec`` types
the worker's serving path speaks, and an ``ApiError`` as a gRPC status.

Tensor data arrives either in ``raw_input_contents`` (one blob per input, in order; a BYTES
element is a 4-byte little-endian length and its bytes, as in Triton) or in the typed
``contents`` fields; outputs always go back in ``raw_output_contents``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from render_gateway.kserve import codec
from render_gateway.worker.errors import ApiError

RENDER_CODE_METADATA = "render-code"

_STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}

# Typed ``contents`` field for each datatype, and the struct format of one element.
_CONTENTS: dict[str, tuple[str, str]] = {
    "BOOL": ("bool_contents", "?"),
    "INT8": ("int_contents", "b"),
    "INT16": ("int_contents", "h"),
    "INT32": ("int_contents", "i"),
    "INT64": ("int64_contents", "q"),
    "UINT8": ("uint_contents", "B"),
    "UINT16": ("uint_contents", "H"),
    "UINT32": ("uint_contents", "I"),
    "UINT64": ("uint64_contents", "Q"),
    "FP32": ("fp32_contents", "f"),
    "FP64": ("fp64_contents", "d"),
}


def status_of(error: ApiError) -> grpc.StatusCode:
    """The gRPC status for a worker error: a duplicate id already exists, a cancelled run is
    CANCELLED; otherwise by its HTTP status (anything unlisted is INTERNAL)."""
    if error.code == "duplicate_request":
        return grpc.StatusCode.ALREADY_EXISTS
    if error.code == "cancelled":
        return grpc.StatusCode.CANCELLED
    return _STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)


# --------------------------------------------------------------------------- parameters


def scalar_of(parameter: Any) -> codec.Scalar:
    which = parameter.WhichOneof("parameter_choice")
    if which is None:
        return ""
    value: codec.Scalar = getattr(parameter, which)
    return value


def parameters_of(parameters: Mapping[str, Any]) -> dict[str, codec.Scalar]:
    return {key: scalar_of(value) for key, value in parameters.items()}


def set_parameter(target: Any, key: str, value: codec.Scalar) -> None:
    parameter = target[key]
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = value


def set_parameters(target: Any, parameters: Mapping[str, codec.Scalar]) -> None:
    for key, value in parameters.items():
        set_parameter(target, key, value)


# ------------------------------------------------------------------------------ requests


def _input_data(tensor: Any, raw: bytes | None, where: str) -> list[Any] | bytes:
    count = math.prod(tensor.shape)
    if raw is not None:
        if tensor.datatype == "BYTES":
            elements = codec.unpack_bytes_elements(raw, where)
            if len(elements) != count:
                raise codec.ProtocolError(
                    f"{where}: shape {list(tensor.shape)} wants {count} elements, "
                    f"got {len(elements)}"
                )
            return elements
        size = codec.ELEMENT_SIZE.get(tensor.datatype)
        if size is None or len(raw) != count * size:
            raise codec.ProtocolError(
                f"{where}: shape {list(tensor.shape)} of {tensor.datatype} does not match "
                f"its {len(raw)} raw bytes"
            )
        return raw
    if tensor.datatype == "BYTES":
        data: list[Any] = list(tensor.contents.bytes_contents)
    elif tensor.datatype in _CONTENTS:
        data = list(getattr(tensor.contents, _CONTENTS[tensor.datatype][0]))
    else:
        raise codec.ProtocolError(f"{where}: {tensor.datatype} data must be raw contents")
    if len(data) != count:
        raise codec.ProtocolError(
            f"{where}: shape {list(tensor.shape)} wants {count} elements, got {len(data)}"
        )
    return data


def infer_request_of(message: Any) -> codec.InferRequest:
    """A ``ModelInferRequest`` as the codec's request (``ProtocolError`` if it is malformed)."""
    raw_contents = list(message.raw_input_contents)
    if raw_contents and len(raw_contents) != len(message.inputs):
        raise codec.ProtocolError(
            f"{len(raw_contents)} raw_input_contents for {len(message.inputs)} inputs"
        )
    if not message.inputs:
        raise codec.ProtocolError("'inputs' must be a non-empty list")
    inputs: list[codec.Tensor] = []
    for index, tensor in enumerate(message.inputs):
        where = f"inputs[{index}] {tensor.name!r}"
        if tensor.datatype not in codec.DATATYPES:
            raise codec.ProtocolError(f"{where}: unknown datatype {tensor.datatype!r}")
        if not tensor.shape or any(d < 0 for d in tensor.shape):
            raise codec.ProtocolError(
                f"{where}: 'shape' must be a non-empty list of non-negative integers"
            )
        if any(t.name == tensor.name for t in inputs):
            raise codec.ProtocolError(f"input {tensor.name!r} appears twice")
        raw = raw_contents[index] if raw_contents else None
        inputs.append(
            codec.Tensor(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=tuple(tensor.shape),
                data=_input_data(tensor, raw, where),
                parameters=parameters_of(tensor.parameters),
            )
        )
    return codec.InferRequest(
        inputs=tuple(inputs),
        id=message.id or None,
        parameters=parameters_of(message.parameters),
        outputs=tuple(codec.RequestedOutput(o.name, binary=True) for o in message.outputs),
    )


# ----------------------------------------------------------------------------- responses


def _raw_data(tensor: codec.Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        assert isinstance(tensor.data, list)
        return codec.pack_bytes_elements(tensor.data)
    if isinstance(tensor.data, bytes):
        return tensor.data
    fmt = _CONTENTS[tensor.datatype][1]
    return struct.pack(f"<{len(tensor.data)}{fmt}", *tensor.data)


def infer_response_of(
    response: codec.InferResponse, extra: Mapping[str, codec.Scalar] | None = None
) -> Any:
    """The codec's response as a ``ModelInferResponse``: outputs raw, parameters typed."""
    message = service_pb2.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version or "",
        id=response.id or "",
    )
    for tensor in response.outputs:
        output = message.outputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape)
        )
        # The bytes travel raw here: there is no content encoding to announce.
        set_parameters(
            output.parameters,
            {k: v for k, v in tensor.parameters.items() if k != "content_encoding"},
        )
        message.raw_output_contents.append(_raw_data(tensor))
    set_parameters(message.parameters, {**response.parameters, **(extra or {})})
    return message

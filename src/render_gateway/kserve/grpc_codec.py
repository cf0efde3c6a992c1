"""KServe v2 gRPC messages (``tritonclient.grpc.service_pb2``) to and from this package's
transport-free types (``codec.Tensor``, ``InferRequest``, ``InferResponse``), without I/O.

Tensor data travels as ``raw_*_contents`` (one bytes field per tensor, in order; BYTES
elements 4-byte little-endian length-prefixed, as in Triton's binary extension) — what Triton
and tritonclient send. Typed ``contents`` are read as well.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from tritonclient.grpc import service_pb2 as pb

from render_gateway.kserve import codec

_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}  # fmt: skip


def parameters_from_proto(params: Mapping[str, Any]) -> dict[str, codec.Scalar]:
    out: dict[str, codec.Scalar] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(param, choice)
    return out


def set_parameters(target: Any, params: Mapping[str, codec.Scalar]) -> None:
    """Fill a message's ``parameters`` map from scalars."""
    for key, value in params.items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            if value >= 2**63:
                slot.uint64_param = value
            else:
                slot.int64_param = value
        elif isinstance(value, float):
            slot.double_param = value
        else:
            slot.string_param = value


def _tensor_from_proto(meta: Any, raw: bytes | None, where: str) -> codec.Tensor:
    datatype = meta.datatype
    if datatype not in codec.DATATYPES:
        raise codec.ProtocolError(f"{where} {meta.name!r}: unknown datatype {datatype!r}")
    shape = tuple(int(d) for d in meta.shape)
    if any(d < 0 for d in shape):
        raise codec.ProtocolError(f"{where} {meta.name!r}: negative dimension in {list(shape)}")
    count = 1
    for d in shape:
        count *= d
    params = parameters_from_proto(meta.parameters)
    data: list[Any] | bytes
    if raw is not None:
        if datatype == "BYTES":
            data = codec.unpack_bytes_elements(raw, f"{where} {meta.name!r}")
            if len(data) != count:
                raise codec.ProtocolError(
                    f"{where} {meta.name!r}: shape {list(shape)} wants {count} elements, "
                    f"got {len(data)}"
                )
        else:
            if len(raw) != count * codec.ELEMENT_SIZE[datatype]:
                raise codec.ProtocolError(
                    f"{where} {meta.name!r}: shape {list(shape)} of {datatype} wants "
                    f"{count * codec.ELEMENT_SIZE[datatype]} bytes, got {len(raw)}"
                )
            data = raw
    else:
        field = _CONTENTS_FIELD.get(datatype)
        values = list(getattr(meta.contents, field)) if field else []
        if len(values) != count:
            raise codec.ProtocolError(
                f"{where} {meta.name!r}: shape {list(shape)} wants {count} elements, "
                f"got {len(values)}"
            )
        data = [bytes(v) for v in values] if datatype == "BYTES" else values
    return codec.Tensor(meta.name, datatype, shape, data, params)


def _tensors(metas: Sequence[Any], raws: Sequence[bytes], where: str) -> list[codec.Tensor]:
    if raws and len(raws) != len(metas):
        raise codec.ProtocolError(
            f"{len(metas)} {where}s but {len(raws)} raw contents (one each is required)"
        )
    return [
        _tensor_from_proto(meta, raws[i] if raws else None, where) for i, meta in enumerate(metas)
    ]


def response_from_proto(message: Any) -> codec.InferResponse:
    """A ``ModelInferResponse``."""
    return codec.InferResponse(
        model_name=message.model_name,
        outputs=tuple(_tensors(message.outputs, message.raw_output_contents, "output")),
        model_version=message.model_version or None,
        id=message.id or None,
        parameters=parameters_from_proto(message.parameters),
    )


def request_from_proto(message: Any) -> codec.InferRequest:
    """A ``ModelInferRequest`` (``ProtocolError`` naming what is malformed)."""
    if not message.inputs:
        raise codec.ProtocolError("'inputs' must be a non-empty list")
    names = [t.name for t in message.inputs]
    for name in names:
        if names.count(name) > 1:
            raise codec.ProtocolError(f"input {name!r} appears twice")
    for tensor in message.inputs:
        if not tensor.shape:
            raise codec.ProtocolError(
                f"input {tensor.name!r}: 'shape' must be a non-empty list of non-negative integers"
            )
    inputs = _tensors(message.inputs, message.raw_input_contents, "input")
    outputs = tuple(codec.RequestedOutput(o.name, binary=True) for o in message.outputs)
    return codec.InferRequest(
        inputs=tuple(inputs),
        id=message.id or None,
        parameters=parameters_from_proto(message.parameters),
        outputs=outputs,
    )


def _raw(tensor: codec.Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        if isinstance(tensor.data, bytes):
            raise codec.ProtocolError(f"tensor {tensor.name!r}: BYTES data must be a list")
        return codec.pack_bytes_elements(tensor.data)
    if isinstance(tensor.data, bytes):
        return tensor.data
    fmt = {"BOOL": "?", "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q", "UINT8": "B",
           "UINT16": "H", "UINT32": "I", "UINT64": "Q", "FP32": "f", "FP64": "d"}  # fmt: skip
    code = fmt.get(tensor.datatype)
    if code is None:
        raise codec.ProtocolError(f"tensor {tensor.name!r}: {tensor.datatype} needs raw bytes")
    return struct.pack(f"<{len(tensor.data)}{code}", *tensor.data)


def request_to_proto(model: str, request: codec.InferRequest) -> Any:
    message = pb.ModelInferRequest(model_name=model, id=request.id or "")
    for tensor in request.inputs:
        entry = message.inputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape)
        )
        set_parameters(entry.parameters, tensor.parameters)
        message.raw_input_contents.append(_raw(tensor))
    for wanted in request.outputs:
        message.outputs.add(name=wanted.name)
    set_parameters(message.parameters, request.parameters)
    return message


def response_to_proto(
    response: codec.InferResponse, extra: Mapping[str, codec.Scalar] | None = None
) -> Any:
    """Outputs raw (so a ``content_encoding`` parameter, which only JSON needs, is dropped);
    ``extra`` parameters are added to the response's (e.g. ``triton_final_response``)."""
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version or "",
        id=response.id or "",
    )
    for tensor in response.outputs:
        entry = message.outputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape)
        )
        params = {k: v for k, v in tensor.parameters.items() if k != "content_encoding"}
        set_parameters(entry.parameters, params)
        message.raw_output_contents.append(_raw(tensor))
    set_parameters(message.parameters, {**response.parameters, **(extra or {})})
    return message


def metadata_from_proto(message: Any) -> dict[str, Any]:
    """A ``ModelMetadataResponse`` in the HTTP API's JSON shape."""

    def tensors(items: Sequence[Any]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": message.name,
        "versions": list(message.versions),
        "platform": message.platform,
        "inputs": tensors(message.inputs),
        "outputs": tensors(message.outputs),
    }

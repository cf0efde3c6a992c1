"""KServe v2 inference messages in JSON and in Triton's binary tensor extension, without I/O.

Both sides use this module: the reference worker decodes requests and encodes responses, the
gateway (and the tests) encode requests and decode responses. Binary framing follows Triton:
the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the tensors'
raw data, in order, each announced by ``parameters.binary_data_size``; a BYTES element is a
4-byte little-endian length followed by its bytes.

In the JSON form a BYTES element is UTF-8 text, unless the tensor's parameters say
``"content_encoding": "base64"`` (how image bytes travel in JSON).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"

Scalar = bool | int | float | str

ELEMENT_SIZE: dict[str, int] = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8,
    "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
    "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8,
}  # fmt: skip
DATATYPES = frozenset(ELEMENT_SIZE) | {"BYTES"}


class ProtocolError(ValueError):
    """The message does not follow the protocol; the text says where."""


@dataclass(frozen=True)
class Tensor:
    """A named tensor. BYTES data is a list of bytes; other data is a flat list of numbers,
    or, when it arrived in binary form, the raw little-endian bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[Any] | bytes
    parameters: Mapping[str, Scalar] = field(default_factory=dict)

    @property
    def element_count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass(frozen=True)
class InferRequest:
    inputs: tuple[Tensor, ...]
    id: str | None = None
    parameters: Mapping[str, Scalar] = field(default_factory=dict)
    outputs: tuple[RequestedOutput, ...] = ()

    def input(self, name: str) -> Tensor:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise ProtocolError(f"input {name!r} is missing")

    def wants_binary(self, output_name: str) -> bool:
        for wanted in self.outputs:
            if wanted.name == output_name:
                return wanted.binary
        return self.parameters.get("binary_data_output", False) is True


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    outputs: tuple[Tensor, ...]
    model_version: str | None = None
    id: str | None = None
    parameters: Mapping[str, Scalar] = field(default_factory=dict)

    def output(self, name: str) -> Tensor:
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        raise ProtocolError(f"output {name!r} is missing")


# ---------------------------------------------------------------------------------- framing


def split_body(body: bytes, header_length: int | None) -> tuple[Any, bytes]:
    """Return the parsed JSON header and the binary section after it."""
    if header_length is None:
        header_bytes, binary = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(
                f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes"
            )
        header_bytes, binary = body[:header_length], body[header_length:]
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("body must be a JSON object")
    return header, binary


def parse_header_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative integer, got {value!r}")
    return int(value)


def _join(header: dict[str, Any], blobs: Sequence[bytes]) -> tuple[bytes, int | None]:
    head = orjson.dumps(header)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


# ------------------------------------------------------------------------------- BYTES data


def pack_bytes_elements(elements: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def unpack_bytes_elements(raw: bytes, where: str) -> list[bytes]:
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"{where}: truncated BYTES length prefix at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"{where}: BYTES element of {length} bytes runs past its data")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        out: list[Any] = []
        for item in data:
            out.extend(_flatten(item))
        return out
    return [data]


# --------------------------------------------------------------------------------- tensors


def _parse_parameters(raw: Any, where: str) -> dict[str, Scalar]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where}: 'parameters' must be an object")
    for key, value in raw.items():
        if not isinstance(value, bool | int | float | str):
            raise ProtocolError(f"{where}: parameter {key!r} must be a bool, number or string")
    return dict(raw)


def _parse_tensor(raw: Any, where: str, binary: bytes, offset: int) -> tuple[Tensor, int]:
    """Parse one tensor; returns it and the new offset into the binary section."""
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where} must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where}: 'name' must be a non-empty string")
    where = f"{where} {name!r}"
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(f"{where}: unknown datatype {datatype!r}")
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ProtocolError(f"{where}: 'shape' must be a non-empty list of non-negative integers")
    parameters = _parse_parameters(raw.get("parameters"), where)
    count = math.prod(shape)
    binary_size = parameters.get("binary_data_size")
    data: list[Any] | bytes
    if binary_size is not None:
        if "data" in raw:
            raise ProtocolError(f"{where}: has both 'data' and 'binary_data_size'")
        if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size < 0:
            raise ProtocolError(f"{where}: 'binary_data_size' must be a non-negative integer")
        if offset + binary_size > len(binary):
            raise ProtocolError(
                f"{where}: binary_data_size {binary_size} runs past the binary section "
                f"({len(binary) - offset} bytes left)"
            )
        chunk = binary[offset : offset + binary_size]
        offset += binary_size
        if datatype == "BYTES":
            data = unpack_bytes_elements(chunk, where)
            if len(data) != count:
                raise ProtocolError(
                    f"{where}: shape {shape} wants {count} elements, got {len(data)}"
                )
        else:
            if len(chunk) != count * ELEMENT_SIZE[datatype]:
                raise ProtocolError(
                    f"{where}: shape {shape} of {datatype} wants "
                    f"{count * ELEMENT_SIZE[datatype]} bytes, got {len(chunk)}"
                )
            data = chunk
        params = {k: v for k, v in parameters.items() if k != "binary_data_size"}
        return Tensor(name, datatype, tuple(shape), data, params), offset
    if "data" not in raw:
        raise ProtocolError(f"{where}: 'data' is missing")
    flat = _flatten(raw["data"])
    if len(flat) != count:
        raise ProtocolError(f"{where}: shape {shape} wants {count} elements, got {len(flat)}")
    if datatype == "BYTES":
        data = [_json_element_to_bytes(e, parameters, where) for e in flat]
    else:
        if not all(isinstance(e, int | float) for e in flat):
            raise ProtocolError(f"{where}: {datatype} data must be numbers")
        data = flat
    return Tensor(name, datatype, tuple(shape), data, parameters), offset


def _json_element_to_bytes(element: Any, parameters: Mapping[str, Scalar], where: str) -> bytes:
    if not isinstance(element, str):
        raise ProtocolError(f"{where}: BYTES elements in JSON must be strings")
    if parameters.get("content_encoding") == "base64":
        try:
            return base64.b64decode(element, validate=True)
        except binascii.Error as exc:
            raise ProtocolError(f"{where}: invalid base64: {exc}") from exc
    return element.encode()


def _bytes_elements(tensor: Tensor) -> list[bytes]:
    if isinstance(tensor.data, bytes) or not all(isinstance(e, bytes) for e in tensor.data):
        raise ProtocolError(f"tensor {tensor.name!r}: BYTES data must be a list of bytes")
    return tensor.data


def _tensor_json(tensor: Tensor, binary: bool, blobs: list[bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
    }
    parameters = dict(tensor.parameters)
    if binary:
        if tensor.datatype == "BYTES":
            blob = pack_bytes_elements(_bytes_elements(tensor))
        elif isinstance(tensor.data, bytes):
            blob = tensor.data
        else:
            raise ProtocolError(f"tensor {tensor.name!r}: binary numeric data must be raw bytes")
        parameters.pop("content_encoding", None)
        parameters["binary_data_size"] = len(blob)
        blobs.append(blob)
    elif tensor.datatype == "BYTES":
        if parameters.get("content_encoding") == "base64":
            out["data"] = [base64.b64encode(e).decode() for e in _bytes_elements(tensor)]
        else:
            try:
                out["data"] = [e.decode() for e in _bytes_elements(tensor)]
            except UnicodeDecodeError as exc:
                raise ProtocolError(
                    f"tensor {tensor.name!r}: bytes that are not UTF-8 need "
                    "content_encoding base64 or the binary extension"
                ) from exc
    else:
        if isinstance(tensor.data, bytes):
            raise ProtocolError(f"tensor {tensor.name!r}: JSON numeric data must be a list")
        out["data"] = tensor.data
    if parameters:
        out["parameters"] = parameters
    return out


# -------------------------------------------------------------------------------- requests


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    header, binary = split_body(body, header_length)
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list")
    inputs: list[Tensor] = []
    offset = 0
    for index, raw in enumerate(raw_inputs):
        tensor, offset = _parse_tensor(raw, f"inputs[{index}]", binary, offset)
        if any(t.name == tensor.name for t in inputs):
            raise ProtocolError(f"input {tensor.name!r} appears twice")
        inputs.append(tensor)
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes after the last binary input")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    outputs: list[RequestedOutput] = []
    raw_outputs = header.get("outputs", [])
    if not isinstance(raw_outputs, list):
        raise ProtocolError("'outputs' must be a list")
    for index, raw in enumerate(raw_outputs):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ProtocolError(f"outputs[{index}] must be an object with a 'name'")
        params = _parse_parameters(raw.get("parameters"), f"outputs[{index}]")
        wants_binary = params.get("binary_data", False)
        if not isinstance(wants_binary, bool):
            raise ProtocolError(f"outputs[{index}]: 'binary_data' must be true or false")
        outputs.append(RequestedOutput(raw["name"], wants_binary))
    return InferRequest(
        inputs=tuple(inputs),
        id=request_id,
        parameters=_parse_parameters(header.get("parameters"), "request"),
        outputs=tuple(outputs),
    )


def encode_request(request: InferRequest, binary_inputs: bool = False) -> tuple[bytes, int | None]:
    blobs: list[bytes] = []
    header: dict[str, Any] = {
        "inputs": [_tensor_json(t, binary_inputs, blobs) for t in request.inputs]
    }
    if request.id is not None:
        header["id"] = request.id
    if request.parameters:
        header["parameters"] = dict(request.parameters)
    if request.outputs:
        header["outputs"] = [
            {"name": o.name, "parameters": {"binary_data": o.binary}} for o in request.outputs
        ]
    return _join(header, blobs)


# ------------------------------------------------------------------------------- responses


def response_json(
    response: InferResponse, binary_outputs: frozenset[str], blobs: list[bytes]
) -> dict[str, Any]:
    header: dict[str, Any] = {
        "model_name": response.model_name,
        "outputs": [_tensor_json(t, t.name in binary_outputs, blobs) for t in response.outputs],
    }
    if response.model_version is not None:
        header["model_version"] = response.model_version
    if response.id is not None:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = dict(response.parameters)
    return header


def encode_response(
    response: InferResponse, binary_outputs: frozenset[str] = frozenset()
) -> tuple[bytes, int | None]:
    blobs: list[bytes] = []
    header = response_json(response, binary_outputs, blobs)
    return _join(header, blobs)


def decode_response(body: bytes, header_length: int | None = None) -> InferResponse:
    header, binary = split_body(body, header_length)
    return response_from_json(header, binary)


def response_from_json(header: Mapping[str, Any], binary: bytes = b"") -> InferResponse:
    model_name = header.get("model_name")
    if not isinstance(model_name, str):
        raise ProtocolError("'model_name' must be a string")
    raw_outputs = header.get("outputs")
    if not isinstance(raw_outputs, list):
        raise ProtocolError("'outputs' must be a list")
    outputs: list[Tensor] = []
    offset = 0
    for index, raw in enumerate(raw_outputs):
        tensor, offset = _parse_tensor(raw, f"outputs[{index}]", binary, offset)
        outputs.append(tensor)
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes after the last binary output")
    version = header.get("model_version")
    response_id = header.get("id")
    return InferResponse(
        model_name=model_name,
        outputs=tuple(outputs),
        model_version=str(version) if version is not None else None,
        id=str(response_id) if response_id is not None else None,
        parameters=_parse_parameters(header.get("parameters"), "response"),
    )

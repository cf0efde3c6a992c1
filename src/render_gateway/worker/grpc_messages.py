"""A worker ``ApiError`` as a gRPC status (the messages themselves convert in
``kserve.grpc_codec``, shared with the gateway's client)."""

from __future__ import annotations

import grpc

from render_gateway.worker.errors import ApiError

RENDER_CODE_METADATA = "render-code"

_STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}


def status_of(error: ApiError) -> grpc.StatusCode:
    """The gRPC status for a worker error: a duplicate id already exists, a cancelled run is
    CANCELLED; otherwise by its HTTP status (anything unlisted is INTERNAL)."""
    if error.code == "duplicate_request":
        return grpc.StatusCode.ALREADY_EXISTS
    if error.code == "cancelled":
        return grpc.StatusCode.CANCELLED
    return _STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)

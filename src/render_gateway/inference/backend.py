"""What the dispatcher needs of a backend, whatever its transport: the ``InferenceBackend``
Protocol (KServe v2 over HTTP, ``kserve_client.KServeClient``, or gRPC,
``kserve_grpc_client.KServeGrpcClient``) and the results and errors every transport returns.

A ``BackendError``'s text is what the customer sees (the job's ``error.message``, the sync
answer): a code the backend gave only when it looks like one, and a short message: the
backend's own for a refused request (4xx: what to fix), a fixed one for its failures (5xx: a
Triton error may carry a Python traceback and server paths).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from render_gateway.core.usage_records import seconds_reading
from render_gateway.kserve.codec import Scalar

# What a code of the backend's must look like to be passed on (Triton puts its whole message
# in "error").
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
# A backend's message is passed on only when short, one line, and free of what an operator
# would not show: tracebacks, source locations, absolute paths, object addresses.
_MAX_PUBLIC_MESSAGE = 300
_NOT_PUBLIC = re.compile(
    r"Traceback|File \"|line \d+, in|(?:^|[\s'\"(=:])/[\w.~-]+/|[A-Za-z]:\\|0x[0-9a-f]{6,}"
)


class BackendError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "backend_error",
        retriable: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retriable = retriable
        self.retry_after = retry_after
        # The backend that failed, once the dispatcher knows it: failed requests' usage
        # records name it (GET /backends shows each backend's latest failures from them).
        self.backend_id: str | None = None


# How Triton's core words a model's own failure (its execute raised or returned an error), over
# HTTP (500) and gRPC (INTERNAL) alike: the model failed on this request, the server is fine.
_MODEL_FAILURE = re.compile(r"Failed to process the request\(s\) for model")
MODEL_ERROR = "model_error"
MODEL_ERROR_MESSAGE = "the model failed on this request"


def is_model_failure(message: str) -> bool:
    """A Triton error that is about the request: not retried, no breaker verdict."""
    return _MODEL_FAILURE.search(message) is not None


def public_code(value: object, fallback: str = "backend_error") -> str:
    text = str(value) if value is not None else ""
    return text if _CODE.fullmatch(text) else fallback


def public_message(status: int | None, code: str, message: str) -> str:
    """The backend's message when it is fit for a customer and the request was refused (4xx,
    or an ``invalid_request`` event); otherwise a fixed line naming the status."""
    refused = (status is not None and 400 <= status < 500) or code == "invalid_request"
    text = message.strip()
    fit = text and len(text) <= _MAX_PUBLIC_MESSAGE and "\n" not in text
    if refused and fit and not _NOT_PUBLIC.search(text):
        return text
    if refused:
        return f"the backend refused the request ({code})"
    answered = f" (HTTP {status})" if status is not None else ""
    return f"the backend failed to run the request{answered}"


@dataclass(frozen=True)
class BackendResult:
    request_id: str
    outputs: list[bytes]
    content_type: str
    parameters: Mapping[str, Scalar]
    # For a backend that reports no gpu_seconds: the seconds of the run the gateway can
    # attribute to this request (attribution.py), never its time queued inside the backend;
    # None when nothing better than the gateway's wall time is known.
    attributed_seconds: float | None = None

    @property
    def gpu_seconds(self) -> float | None:
        # A NaN, negative or absurd figure is none: the run is then attributed, as unmetered.
        return seconds_reading(self.parameters.get("gpu_seconds"))

    @property
    def usage_claim(self) -> str | None:
        value = self.parameters.get("usage_claim")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Progress:
    step: int
    steps: int
    progress: float
    gpu_seconds: float | None = None  # the run's device time so far, where the backend says
    preview: bytes | None = None  # an image of the unfinished run (asked for with previews)


@dataclass(frozen=True)
class Cancelled:
    """The backend stopped the run on request; its parameters carry the signed claim."""

    request_id: str
    parameters: Mapping[str, Scalar]
    attributed_seconds: float | None = None  # as BackendResult's; None: nothing attributable


StreamEvent = Progress | BackendResult | Cancelled


class InferenceBackend(Protocol):
    """One backend endpoint as the gateway uses it."""

    async def ready(self, probe_seconds: float = 2.0) -> bool: ...

    async def node_key(self, probe_seconds: float = 2.0) -> tuple[str, bytes] | None:
        """(key id, raw Ed25519 public key) of the node that signs usage claims; None for a
        backend that signs none."""
        ...

    async def model_metadata(self, model: str, probe_seconds: float = 5.0) -> dict[str, Any] | None:
        """KServe v2 model metadata; None on any failure."""
        ...

    async def infer(
        self, model: str, generation: bytes, request_id: str, run_seconds: float = 600.0
    ) -> BackendResult: ...

    def generate_stream(
        self, model: str, generation: bytes, request_id: str, run_seconds: float = 600.0
    ) -> AsyncIterator[StreamEvent]:
        """Progress events, then the result (or Cancelled)."""
        ...

    async def cancel(self, model: str, request_id: str) -> bool:
        """Ask the backend to stop a run; False if it has no such run (or cannot)."""
        ...

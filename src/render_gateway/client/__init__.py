"""Render's Python client: ``RenderClient`` (blocking) and ``AsyncRenderClient`` (asyncio) over
one sans-IO core (``protocol.py``), the gateway's errors as types, and the checks a customer
runs offline (``verify_webhook``, ``verify_proof``). Reference: docs/API.md, "Python client"."""

from render_gateway.client.asynchronous import AsyncJob, AsyncRenderClient
from render_gateway.client.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    RenderConnectionError,
    RenderError,
    ServerError,
    UnavailableError,
    WaitTimeout,
)
from render_gateway.client.protocol import (
    Generated,
    JobEvent,
    JobState,
    Queued,
    RetryPolicy,
    UploadedAsset,
)
from render_gateway.client.sync import Job, RenderClient
from render_gateway.client.verification import (
    ProofVerificationError,
    VerifiedProof,
    WebhookVerificationError,
    verify_proof,
    verify_webhook,
)

__all__ = [
    "AsyncJob",
    "AsyncRenderClient",
    "AuthenticationError",
    "ConflictError",
    "Generated",
    "InvalidRequestError",
    "Job",
    "JobEvent",
    "JobState",
    "NotFoundError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "ProofVerificationError",
    "Queued",
    "RateLimitError",
    "RenderClient",
    "RenderConnectionError",
    "RenderError",
    "RetryPolicy",
    "ServerError",
    "UnavailableError",
    "UploadedAsset",
    "VerifiedProof",
    "WaitTimeout",
    "WebhookVerificationError",
    "verify_proof",
    "verify_webhook",
]

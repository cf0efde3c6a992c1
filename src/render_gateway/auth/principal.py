"""Who is calling, and the one error every failed authentication raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AuthMethod = Literal["api_key", "jwt", "anonymous"]

# Machine codes a client can branch on; the HTTP layer turns any of them into a 401
# (``keys_unavailable`` is the server's fault: it may prefer a 503).
AuthErrorCode = Literal[
    "missing_credentials",
    "invalid_authorization",
    "invalid_credentials",
    "unsupported_credentials",
    "invalid_api_key",
    "revoked_api_key",
    "invalid_token",
    "expired_token",
    "keys_unavailable",
]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the customer to bill and the plan that sets its limits."""

    customer_id: str
    plan: str
    method: AuthMethod
    key_id: str | None = None  # the API key used, so logs can name it without the secret


class AuthError(Exception):
    """Authentication failed. ``message`` is for humans and never contains the credential."""

    def __init__(self, code: AuthErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: AuthErrorCode = code
        self.message = message

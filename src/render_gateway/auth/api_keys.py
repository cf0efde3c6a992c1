"""API keys: what a key is, and the rules every key store (stores/keys.py) follows.

A secret is ``rk_`` + 40 base62 characters (40 · log2 62 ≈ 238 random bits). It is shown once
and only its SHA-256 is ever stored. Guessing one is hopeless, so a fast unsalted hash is
enough: it cannot be inverted or brute-forced, and it lets a store find the key with one
indexed lookup instead of checking every row with a slow KDF.

Everything here is pure: making a key and its secret, the digest a store keeps, and the
refusals (malformed, unknown, revoked) that every store gives alike.
"""

from __future__ import annotations

import builtins
import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from render_gateway.auth.names import check_name
from render_gateway.auth.principal import AuthError
from render_gateway.core.ids import random_base62

API_KEY_PREFIX = "rk_"
_SECRET_CHARS = 40
_KEY_ID_CHARS = 12  # a key id is a handle, not a credential: uniqueness is all it needs
_SECRET = re.compile(rf"rk_[0-9A-Za-z]{{{_SECRET_CHARS}}}")


@dataclass(frozen=True)
class ApiKey:
    """What is stored about a key. Times are seconds since the epoch (UTC)."""

    key_id: str
    customer_id: str
    plan: str
    created_at: float
    revoked_at: float | None = None


def new_key(customer_id: str, plan: str, now: float) -> tuple[ApiKey, str]:
    """A new key and its secret (ValueError naming a bad customer id or plan). The secret is
    for the caller to show once: a store keeps only ``secret_digest`` of it."""
    check_name("customer id", customer_id)
    check_name("plan", plan)
    secret = API_KEY_PREFIX + random_base62(_SECRET_CHARS)
    return ApiKey("key_" + random_base62(_KEY_ID_CHARS), customer_id, plan, now), secret


def secret_digest(secret: str) -> bytes:
    """What a store keeps of a secret and looks a key up by. AuthError for what cannot be a
    secret, so no store does any work for it."""
    if _SECRET.fullmatch(secret) is None:
        raise AuthError("invalid_api_key", "the API key is malformed")
    return hashlib.sha256(secret.encode("ascii")).digest()


def active_key(found: ApiKey | None) -> ApiKey:
    """The key a lookup by digest found, if it may be used; AuthError otherwise."""
    if found is None:
        raise AuthError("invalid_api_key", "the API key is not known")
    if found.revoked_at is not None:
        raise AuthError("revoked_api_key", f"the API key {found.key_id} has been revoked")
    return found


class ApiKeyStore(Protocol):
    async def create(self, customer_id: str, plan: str) -> tuple[ApiKey, str]:
        """A new key and its secret. The secret is not kept anywhere: show it once.
        ValueError naming a bad customer id or plan."""
        ...

    async def create_first(self, customer_id: str, plan: str) -> tuple[ApiKey, str] | None:
        """Like ``create``, but only while the store holds no key at all (revoked ones count):
        None, changing nothing, otherwise. One atomic step, so of the replicas that start
        together on an empty shared store exactly one makes the first admin key."""
        ...

    async def authenticate(self, secret: str) -> ApiKey:
        """The active key whose secret this is; AuthError (invalid_api_key or
        revoked_api_key) otherwise."""
        ...

    async def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        ...

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key; False if there is no such key or it was revoked already."""
        ...

    async def close(self) -> None:
        """Release the store; every later call raises RuntimeError."""
        ...

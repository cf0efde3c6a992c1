"""``memory://`` API keys: this process only, gone when it ends (tests, throwaway gateways).

Like the SQLite store it keeps the secret's digest, never the secret, so what a memory dump
shows is no more than what keys.db shows. Each operation runs to completion on the event loop
without awaiting, so none sees another half done.
"""

from __future__ import annotations

import builtins
import dataclasses
import time
from collections.abc import Callable

from render_gateway.auth.api_keys import ApiKey, active_key, new_key, secret_digest


class MemoryApiKeyStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._by_digest: dict[bytes, str] = {}  # secret digest → key id
        self._keys: dict[str, ApiKey] = {}  # by key id, in creation order (dicts keep it)
        self._closed = False

    async def create(self, customer_id: str, plan: str) -> tuple[ApiKey, str]:
        self._check_open()
        key, secret = new_key(customer_id, plan, self._clock())
        self._by_digest[secret_digest(secret)] = key.key_id
        self._keys[key.key_id] = key
        return key, secret

    async def create_first(self, customer_id: str, plan: str) -> tuple[ApiKey, str] | None:
        self._check_open()
        if self._keys:  # no await between this check and the create: atomic on the loop
            return None
        return await self.create(customer_id, plan)

    async def authenticate(self, secret: str) -> ApiKey:
        digest = secret_digest(secret)
        self._check_open()
        key_id = self._by_digest.get(digest)
        return active_key(self._keys[key_id] if key_id is not None else None)

    async def list(self) -> builtins.list[ApiKey]:
        self._check_open()
        return builtins.list(self._keys.values())

    async def revoke(self, key_id: str) -> bool:
        self._check_open()
        key = self._keys.get(key_id)
        if key is None or key.revoked_at is not None:
            return False
        self._keys[key_id] = dataclasses.replace(key, revoked_at=self._clock())
        return True

    async def close(self) -> None:
        self._closed = True
        self._by_digest.clear()
        self._keys.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the API key store is closed")

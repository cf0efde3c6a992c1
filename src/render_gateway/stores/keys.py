"""The API key store: keys by the digest of their secret, revocable, every check fresh.

Stores keep only ``secret_digest`` of a secret (auth/api_keys.py), never the secret. Every
``authenticate`` reads the store, so a revocation made anywhere (the CLI, another replica) takes
effect on the next request.

``sqlite:///abs/keys.db`` is the embedded default (one file, mode 0600, shared by the gateway and
the CLI); ``memory://`` is this process only, for tests and throwaway gateways; ``redis://`` (or
``rediss://``) is shared by every replica (stores/redis_keys.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from render_gateway.auth.api_keys import ApiKeyStore

__all__ = ["ApiKeyStore", "open_key_store"]  # the Protocol lives with the key rules (auth)
from render_gateway.stores.urls import parse_store_url


def open_key_store(url: str, clock: Callable[[], float] = time.time) -> ApiKeyStore:
    """The store ``[gateway.stores] keys`` names; ``clock`` stamps created_at and revoked_at."""
    parsed = parse_store_url("keys", url, ("sqlite", "memory", "redis", "rediss"))
    # Imported here, so that importing the Protocol (as api/ does) loads no implementation.
    if parsed.scheme == "sqlite":
        from render_gateway.stores.sqlite_keys import SqliteApiKeyStore

        return SqliteApiKeyStore(parsed.sqlite_path(), clock)
    if parsed.scheme == "memory":
        from render_gateway.stores.memory_keys import MemoryApiKeyStore

        return MemoryApiKeyStore(clock)
    if parsed.scheme in ("redis", "rediss"):
        from render_gateway.stores.redis_client import open_redis
        from render_gateway.stores.redis_keys import RedisApiKeyStore

        return RedisApiKeyStore(open_redis(url), clock)
    raise AssertionError(f"unhandled scheme {parsed.scheme}")  # parse_store_url checked it

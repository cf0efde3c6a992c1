"""One JWKS URL's keys: fetched with a timeout and a size cap, cached, refetched sparingly.

Two things make the key set be fetched: the cache getting older than ``cache_seconds``, and a
token naming a ``kid`` the cache does not hold (the issuer may have rotated). Either way the
URL is fetched at most once per ``min_refetch_seconds``: anyone can send tokens with made-up
kids, and they must not be able to turn the gateway into a load generator against the issuer.
Fetches are single-flight, so concurrent misses share one request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import aiohttp
import orjson

from render_gateway.auth.verification_keys import VerificationKey, parse_jwks

log = logging.getLogger(__name__)

FETCH_TIMEOUT_SECONDS = 5.0
MAX_JWKS_BYTES = 1 << 20
MIN_REFETCH_SECONDS = 30.0


class JwksUnavailable(Exception):
    """No key set could be fetched, and none was fetched before."""


async def fetch_jwks(
    url: str, timeout_seconds: float = FETCH_TIMEOUT_SECONDS, max_bytes: int = MAX_JWKS_BYTES
) -> tuple[VerificationKey, ...]:
    """GET ``url`` and parse it as a key set; JwksUnavailable on any failure."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_seconds)) as session,
            session.get(url, headers={"Accept": "application/json"}, max_redirects=3) as response,
        ):
            if response.status != 200:
                raise JwksUnavailable(f"{url} answered HTTP {response.status}")
            if response.content_length is not None and response.content_length > max_bytes:
                raise JwksUnavailable(f"{url} sent more than {max_bytes} bytes")
            body = bytearray()
            # Counted while reading: a missing or lying Content-Length must not bypass the cap.
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > max_bytes:
                    raise JwksUnavailable(f"{url} sent more than {max_bytes} bytes")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise JwksUnavailable(f"fetching {url} failed: {exc!r}") from exc
    try:
        return parse_jwks(orjson.loads(body))
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise JwksUnavailable(f"{url} did not send a key set: {exc}") from exc


class JwksCache:
    def __init__(
        self,
        url: str,
        cache_seconds: float,
        min_refetch_seconds: float = MIN_REFETCH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._cache_seconds = cache_seconds
        self._min_refetch_seconds = min_refetch_seconds
        self._clock = clock
        self._keys: tuple[VerificationKey, ...] | None = None
        self._fetched_at = -math.inf  # last successful fetch: how fresh the cache is
        self._attempted_at = -math.inf  # last fetch of any outcome: the rate limit
        self._lock = asyncio.Lock()

    async def keys(self) -> tuple[VerificationKey, ...]:
        """The cached keys, refreshed first when older than ``cache_seconds``."""
        if self._keys is not None and self._clock() - self._fetched_at < self._cache_seconds:
            return self._keys
        return await self._refresh(max_age=self._cache_seconds)

    async def keys_after_unknown_kid(self) -> tuple[VerificationKey, ...]:
        """Refetch (unless the rate limit says no) because a token named a kid we lack."""
        return await self._refresh(max_age=0.0)

    async def _refresh(self, max_age: float) -> tuple[VerificationKey, ...]:
        async with self._lock:
            now = self._clock()
            if self._keys is not None and now - self._fetched_at < max_age:
                return self._keys  # refreshed by another task while this one waited
            if now - self._attempted_at < self._min_refetch_seconds:
                return self._current()
            self._attempted_at = now
            try:
                keys = await fetch_jwks(self._url)
            except JwksUnavailable as exc:
                # Keep serving the last good set: its keys were authentic when fetched, and an
                # issuer outage should not log every customer out.
                log.warning("JWKS refresh failed, keeping the cached keys: %s", exc)
                return self._current()
            self._keys, self._fetched_at = keys, self._clock()
            return keys

    def _current(self) -> tuple[VerificationKey, ...]:
        if self._keys is None:
            raise JwksUnavailable(f"no key set could be fetched from {self._url} yet")
        return self._keys

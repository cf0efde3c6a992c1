"""Webhook deliveries for async jobs, signed per the Standard Webhooks specification.

A delivery is a POST of the job's JSON with three headers: ``webhook-id`` (the same on every
retry, so receivers can deduplicate), ``webhook-timestamp`` (unix seconds, fresh per attempt)
and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` over ``f"{id}.{timestamp}.{body}"``,
keyed with the base64-decoded part of a ``whsec_…`` secret).

``WebhookSender.send`` never waits: it schedules a background task and returns. Retries back off
exponentially with jitter; a semaphore bounds the HTTP requests in flight across all deliveries,
and ``max_pending`` bounds how many deliveries may wait, so a slow or dead receiver costs other
jobs neither time nor connections.

Where a webhook may go is ``url_policy``'s rule (the worker's remote images follow the same):
https only unless ``allow_http``, and only to public addresses unless
``allow_private_addresses``. ``check`` applies it when a URL is accepted (the submit's 400); the
sender's own connector applies it again to the addresses each delivery connects to, so a name
that resolves elsewhere by then is still refused, before any packet is sent. Refusals are final
(never retried), and redirects are never followed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import math
import os
import random
import re
import secrets
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver
from yarl import URL

from render_gateway.core.ids import random_base62
from render_gateway.url_policy import (
    UrlPolicy,
    UrlRefused,
    check_literal,
    check_url,
    guarded_connector,
    refusal_in,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)
SIGNATURE_VERSION = "v1"
# The specification asks for secrets of 24 to 64 bytes; we generate 32.
_MIN_KEY_BYTES, _MAX_KEY_BYTES, _GENERATED_KEY_BYTES = 24, 64, 32
# A webhook-id travels in a header and in the signed text: no spaces, no control characters.
_EVENT_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


@dataclass(frozen=True)
class WebhookSecret:
    # repr=False: a secret must never end up in a log line or a traceback.
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _MIN_KEY_BYTES <= len(self.key) <= _MAX_KEY_BYTES:
            raise ValueError(
                f"a webhook secret must be {_MIN_KEY_BYTES} to {_MAX_KEY_BYTES} bytes, "
                f"not {len(self.key)}"
            )

    @classmethod
    def generate(cls) -> WebhookSecret:
        return cls(secrets.token_bytes(_GENERATED_KEY_BYTES))

    @classmethod
    def parse(cls, text: str) -> WebhookSecret:
        text = text.strip()
        if not text.startswith(SECRET_PREFIX):
            raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
        try:
            key = base64.b64decode(text.removeprefix(SECRET_PREFIX), validate=True)
        except binascii.Error:
            # Not chained: the message of the base64 error could quote the secret.
            raise ValueError(f"a webhook secret is {SECRET_PREFIX!r} followed by base64") from None
        return cls(key)

    @property
    def text(self) -> str:
        return SECRET_PREFIX + base64.b64encode(self.key).decode("ascii")

    @classmethod
    def load_or_create(cls, path: Path) -> WebhookSecret:
        """The secret in ``path``; a new one written there (mode 0600) if the file is absent."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            # O_EXCL + mode at creation: the file is never readable by others, and two
            # processes starting together cannot both write a different secret.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls._load(path)
        created = cls.generate()
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(created.text + "\n")
            file.flush()
            os.fsync(file.fileno())
        return created

    @classmethod
    def _load(cls, path: Path) -> WebhookSecret:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ValueError(
                f"{path} holds the webhook signing secret but is accessible by group or others "
                f"(mode {mode:04o}); run 'chmod 600 {path}'"
            )
        try:
            return cls.parse(path.read_text(encoding="ascii"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} does not hold a valid webhook secret: {exc}") from None


def _signature(secret: WebhookSecret, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.key, signed, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def sign(secret: WebhookSecret, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt: ``v1,<base64 HMAC-SHA256>``."""
    return f"{SIGNATURE_VERSION},{_signature(secret, msg_id, timestamp, body)}"


def verify(
    secret: WebhookSecret,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_seconds: float = 300,
) -> bool:
    """Whether a delivery is authentic and fresh (what a receiver does; our tests use it)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not signatures or not timestamp_text.isdecimal():
        return False
    timestamp = int(timestamp_text)
    # The tolerance is what stops an attacker replaying a captured delivery later.
    if abs(now - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, msg_id, timestamp, body).encode()
    # Several signatures are allowed (secret rotation); compare each in constant time, as bytes
    # since compare_digest refuses non-ASCII str.
    return any(
        hmac.compare_digest(expected, candidate.encode()) for candidate in signatures.split()
    )


@dataclass(frozen=True)
class _Delivery:
    url: str
    msg_id: str
    body: bytes


@dataclass(frozen=True)
class _Outcome:
    delivered: bool
    retryable: bool
    detail: str
    retry_after: float | None = None


def _retry_after(value: str | None) -> float | None:
    """A numeric ``Retry-After`` in seconds; the HTTP-date form is ignored (backoff applies)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _redacted(url: str) -> str:
    # A webhook URL may carry a token in its query or userinfo: keep those out of logs.
    try:
        return str(URL(url).with_user(None).with_query(None).with_fragment(None))
    except ValueError:
        return "(an invalid URL)"


class WebhookSender:
    """Delivers signed webhooks in the background, with retries; see the module docstring."""

    def __init__(
        self,
        secret: WebhookSecret,
        policy: UrlPolicy | None = None,
        *,
        resolver: AbstractResolver | None = None,  # DNS for tests; aiohttp's default otherwise
        max_attempts: int = 6,
        base_delay_seconds: float = 1.0,
        max_delay_seconds: float = 300.0,
        timeout_seconds: float = 10.0,
        max_concurrent: int = 16,
        max_pending: int = 10_000,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1 or max_concurrent < 1 or max_pending < 1:
            raise ValueError("max_attempts, max_concurrent and max_pending must be at least 1")
        if not (0 <= base_delay_seconds <= max_delay_seconds) or timeout_seconds <= 0:
            raise ValueError("need 0 <= base_delay <= max_delay and a positive timeout")
        self._secret = secret
        self._policy = policy or UrlPolicy()
        self._resolver = resolver
        # Its own session: the policy lives in the connector, and the gateway's other session
        # talks to backends on private addresses. Made on first use, inside the event loop.
        self._session: aiohttp.ClientSession | None = None
        self._max_attempts = max_attempts
        self._base_delay, self._max_delay = base_delay_seconds, max_delay_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._requests = asyncio.Semaphore(max_concurrent)
        self._max_pending = max_pending
        self._sleep, self._clock = sleep, clock
        self._rng = rng or random.Random()
        # Strong references: the event loop keeps only weak ones to tasks.
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._delivered = self._failed = self._dropped = 0

    @property
    def delivered(self) -> int:
        return self._delivered

    @property
    def failed(self) -> int:
        """Deliveries given up on (a final status, or every attempt failed)."""
        return self._failed

    @property
    def dropped(self) -> int:
        """Deliveries refused by ``send`` (``max_pending`` reached, or the sender closed)."""
        return self._dropped

    @property
    def pending(self) -> int:
        return sum(not task.done() for task in self._tasks)

    @property
    def policy(self) -> UrlPolicy:
        return self._policy

    async def check(self, url: str) -> None:
        """Refuse (UrlRefused, saying why) a URL this sender would not deliver to, resolving its
        host now; a submit calls it so that the customer hears at once."""
        await check_url(url, self._policy, self._resolver)

    def send(self, url: str, payload: dict[str, Any], event_id: str | None = None) -> bool:
        """Schedule a delivery and return at once; False (a drop) if too many are pending.
        A URL the policy refuses by its form alone (scheme, an IP literal) raises UrlRefused.

        Must be called from the event loop's thread, inside a running loop.
        """
        try:
            check_literal(url, self._policy)
        except UrlRefused as exc:
            raise UrlRefused(f"webhook URL {_redacted(url)[:200]!r}: {exc}") from None
        msg_id = event_id if event_id is not None else "msg_" + random_base62()
        if not _EVENT_ID.fullmatch(msg_id):
            raise ValueError(f"invalid webhook event id {msg_id[:200]!r}")
        # Serialised now, so that an unserialisable payload fails the caller, not a task.
        body = orjson.dumps(payload)
        if self._closed or self.pending >= self._max_pending:
            self._dropped += 1
            log.warning("webhook to %s dropped (%d pending)", _redacted(url), self.pending)
            return False
        task = asyncio.get_running_loop().create_task(self._deliver(_Delivery(url, msg_id, body)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    # A plain timeout argument (ASYNC109): shutdown code calls drain(5) without a scope of its own.
    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for pending deliveries; True if none are left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while waiting := {task for task in self._tasks if not task.done()}:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.wait(waiting, timeout=remaining)
        return True

    async def close(self) -> None:
        """Cancel every pending delivery; later ``send`` calls are dropped."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _backoff(self, attempt: int) -> float:
        """Delay after failed attempt ``attempt`` (1-based): exponential, 'equal jitter'."""
        ceiling = min(self._max_delay, self._base_delay * 2 ** (attempt - 1))
        return float(ceiling / 2 + self._rng.uniform(0, ceiling / 2))

    async def _deliver(self, delivery: _Delivery) -> None:
        try:
            for attempt in range(1, self._max_attempts + 1):
                outcome = await self._attempt(delivery)
                if outcome.delivered:
                    self._delivered += 1
                    return
                if not outcome.retryable or attempt == self._max_attempts:
                    break
                delay = self._backoff(attempt)
                if outcome.retry_after is not None:
                    delay = min(self._max_delay, outcome.retry_after)
                log.info(
                    "webhook %s to %s: %s; retry in %.1fs",
                    delivery.msg_id,
                    _redacted(delivery.url),
                    outcome.detail,
                    delay,
                )
                await self._sleep(delay)
            self._failed += 1
            log.warning(
                "webhook %s to %s given up after attempt %d: %s",
                delivery.msg_id,
                _redacted(delivery.url),
                attempt,
                outcome.detail,
            )
        except Exception:
            # A bug here must not become an unretrieved task exception; count it and move on.
            self._failed += 1
            log.exception("webhook %s to %s failed", delivery.msg_id, _redacted(delivery.url))

    async def _attempt(self, delivery: _Delivery) -> _Outcome:
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": delivery.msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, delivery.msg_id, timestamp, delivery.body),
        }
        if self._session is None:
            connector = guarded_connector(self._policy, self._resolver)
            self._session = aiohttp.ClientSession(connector=connector)
        try:
            # The semaphore bounds requests, not deliveries: none is held during a backoff.
            async with (
                self._requests,
                self._session.post(
                    delivery.url,
                    data=delivery.body,
                    headers=headers,
                    timeout=self._timeout,
                    # A redirect would turn the POST into a GET elsewhere; a receiver must
                    # give its final URL.
                    allow_redirects=False,
                ) as response,
            ):
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except TimeoutError:
            return _Outcome(False, True, "timed out")
        except aiohttp.ClientError as exc:
            if (refused := refusal_in(exc)) is not None:
                return _Outcome(False, False, f"refused: {refused}")  # final: it would again
            return _Outcome(False, True, f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return _Outcome(True, False, f"HTTP {status}")
        retryable = status == 429 or status >= 500
        return _Outcome(False, retryable, f"HTTP {status}", retry_after)

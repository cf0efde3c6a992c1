"""Webhook deliveries for async jobs, signed per the Standard Webhooks specification.

A delivery is a POST of the job's JSON with three headers: ``webhook-id`` (the same on every
retry, so receivers can deduplicate), ``webhook-timestamp`` (unix seconds, fresh per attempt)
and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` over ``f"{id}.{timestamp}.{body}"``,
keyed with the base64-decoded part of a ``whsec_…`` secret).

Deliveries are durable: each is kept in a ``WebhookDeliveries`` store (``[gateway.stores]
webhooks``; SQLite under the data dir by default) until it is delivered or given up on, so a
restart, even a kill -9, resumes every pending delivery and its retries. The event id is the
store's key: an event sent twice goes out once. ``WebhookSender.send`` never waits: a
background task stores the delivery, and the future ``send`` returns resolves once it is
durable (settle awaits it; a caller that need not know ignores it). A delivery loop
(``start``) claims due deliveries from the store, leasing them so that no other process sharing
the store takes them while they are in flight, attempts them, and records each outcome there:
delivered, given up on, or due again after a backoff. Retries back off exponentially with
jitter (or as a 429/5xx's ``Retry-After`` says); at most ``max_concurrent`` attempts are in
flight across all deliveries, and ``max_pending`` bounds how many deliveries may wait, so a slow
or dead receiver costs other jobs neither time nor connections.

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
import contextlib
import functools
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
from render_gateway.stores.webhooks import PendingDelivery, WebhookDeliveries, open_webhook_store
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
# How much longer than an attempt's timeout a claim's lease lasts (the time to record the
# outcome): past it, the delivery is due again, for another process if this one died mid-attempt.
_LEASE_MARGIN_SECONDS = 20.0


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

    def fingerprint(self) -> str:
        """An HMAC of a fixed text under the secret: equal on two replicas iff their secrets
        are, and says nothing of the secret itself."""
        return hmac.new(self.key, b"render-webhook-secret.fingerprint", hashlib.sha256).hexdigest()

    @classmethod
    def load_or_create(cls, path: Path, shared: Path | None = None) -> WebhookSecret:
        """The secret in ``shared`` when given (it must exist: see ``load``); else the secret
        in ``path``, a new one written there (mode 0600) if the file is absent."""
        if shared is not None:
            return cls.load(shared)
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
    def load(cls, path: Path) -> WebhookSecret:
        """The secret in ``path`` (``[gateway.webhooks] secret_file``), which must exist: every
        replica signs with this one, so none creates its own."""
        if not path.is_file():
            raise ValueError(
                f"gateway.webhooks.secret_file: {path} does not exist (copy a replica's "
                "<data_dir>/webhook_secret there)"
            )
        return cls._load(path)

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
    """Delivers signed webhooks from a durable store, with retries; see the module docstring."""

    def __init__(
        self,
        secret: WebhookSecret,
        policy: UrlPolicy | None = None,
        *,
        # Whoever opened a store closes it; when none is given, the sender opens (and closes)
        # a memory:// one, which lives only as long as this process.
        store: WebhookDeliveries | None = None,
        resolver: AbstractResolver | None = None,  # DNS for tests; aiohttp's default otherwise
        max_attempts: int = 6,
        base_delay_seconds: float = 1.0,
        max_delay_seconds: float = 300.0,
        timeout_seconds: float = 10.0,
        max_concurrent: int = 16,
        max_pending: int = 10_000,
        lease_seconds: float | None = None,  # timeout + _LEASE_MARGIN_SECONDS when not given
        poll_seconds: float = 1.0,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1 or max_concurrent < 1 or max_pending < 1:
            raise ValueError("max_attempts, max_concurrent and max_pending must be at least 1")
        if not (0 <= base_delay_seconds <= max_delay_seconds) or timeout_seconds <= 0:
            raise ValueError("need 0 <= base_delay <= max_delay and a positive timeout")
        lease = timeout_seconds + _LEASE_MARGIN_SECONDS if lease_seconds is None else lease_seconds
        if not lease > timeout_seconds or not poll_seconds > 0:
            raise ValueError("need lease_seconds > timeout_seconds and a positive poll_seconds")
        self._secret = secret
        self._policy = policy or UrlPolicy()
        self._owns_store = store is None
        self._store = store if store is not None else open_webhook_store("memory://", clock)
        self._resolver = resolver
        # Its own session: the policy lives in the connector, and the gateway's other session
        # talks to backends on private addresses. Made on first use, inside the event loop.
        self._session: aiohttp.ClientSession | None = None
        self._max_attempts = max_attempts
        self._base_delay, self._max_delay = base_delay_seconds, max_delay_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._max_concurrent = max_concurrent
        self._requests = asyncio.Semaphore(max_concurrent)
        self._max_pending = max_pending
        self._lease, self._poll = lease, poll_seconds
        self._sleep, self._clock = sleep, clock
        self._rng = rng or random.Random()
        # What this process has in hand. Strong references to tasks: the event loop keeps only
        # weak ones.
        self._storing: set[asyncio.Task[bool]] = set()  # accepted sends being enqueued
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # claimed, being attempted
        self._scheduled: dict[str, float] = {}  # enqueued or rescheduled here → when due
        self._more_due = False  # the last claim was cut short by max_concurrent (or failed)
        self._loop: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # the delivery loop has something new to look at
        self._changed = asyncio.Event()  # what drain waits on: something above changed
        self._first_pass = asyncio.Event()
        self._store_failing = False
        # The store's pending count as last read; the sequence keeps a slow, older read from
        # overwriting a newer one.
        self._stored_pending = 0
        self._count_started = self._count_applied = 0
        self._closed = self._close_done = False
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
        """Deliveries refused by ``send`` (``max_pending`` reached, the sender closed, or the
        store failed to take them)."""
        return self._dropped

    @property
    def pending(self) -> int:
        """Deliveries in the store (as last counted: due, in flight or waiting for a retry, of
        every process sharing it), plus accepted sends not stored yet."""
        return self._stored_pending + len(self._storing)

    @property
    def policy(self) -> UrlPolicy:
        return self._policy

    async def check(self, url: str) -> None:
        """Refuse (UrlRefused, saying why) a URL this sender would not deliver to, resolving its
        host now; a submit calls it so that the customer hears at once."""
        await check_url(url, self._policy, self._resolver)

    async def start(self) -> None:
        """Open the store (a store that cannot be opened fails here, at start) and start the
        delivery loop; deliveries left pending by an earlier process that are due now are
        claimed before this returns. ``send`` starts the loop too, if this was not called."""
        if self._closed:
            raise RuntimeError("the webhook sender is closed")
        if self._loop is not None:
            return
        self._stored_pending = await self._store.pending()
        self._ensure_loop()
        await self._first_pass.wait()

    def send(
        self, url: str, payload: dict[str, Any], event_id: str | None = None
    ) -> asyncio.Future[bool]:
        """Accept a delivery and return at once; a background task stores it. The future it
        returns resolves once the delivery is durable: True when it is in the store (stored now,
        or its event id was stored before: an event is sent once), False when it was dropped
        (``max_pending`` reached, the sender closed, or the store refused the write). Callers
        that must know it is durable await it (settle does); others may ignore it. Cancelling
        the await does not stop the store write.

        A URL the policy refuses by its form alone (scheme, an IP literal) raises UrlRefused, and
        a malformed event id ValueError, at once. Must be called from the event loop's thread,
        inside a running loop.
        """
        delivery = self._prepare(url, payload, event_id)
        loop = asyncio.get_running_loop()
        if not self._admit(delivery):
            dropped = loop.create_future()
            dropped.set_result(False)
            return dropped
        task = loop.create_task(self._store_delivery(delivery))
        self._storing.add(task)
        task.add_done_callback(self._stored)
        # Shielded: an awaiting caller that is cancelled must not cancel the write.
        return asyncio.shield(task)

    # A plain timeout argument (ASYNC109): shutdown code calls drain(5) without a scope of its own.
    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for the deliveries in this process's hands (being
        stored, due now, in flight, or waiting for a retry scheduled here); True if none is
        left. Whatever is left stays pending in the store, for the next start (or another
        process sharing the store) to resume."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()  # before the check: a change after it wakes the wait below
            if self._idle():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def close(self) -> None:
        """Stop delivering; later ``send`` calls are dropped. Accepted sends are stored first;
        attempts in flight are cancelled and handed back to the store, due at once, so nothing
        pending is lost: the next start resumes it. A store given to the constructor stays open
        (its opener closes it, after this)."""
        self._closed = True
        if self._close_done:
            return
        self._close_done = True
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        await asyncio.gather(*self._storing, return_exceptions=True)
        attempts = list(self._in_flight.values())
        for task in attempts:
            task.cancel()
        await asyncio.gather(*attempts, return_exceptions=True)
        self._scheduled.clear()
        self._more_due = False
        try:
            if self._owns_store:
                await self._store.close()
        finally:
            if self._session is not None:
                await self._session.close()

    # --- accepting a delivery ------------------------------------------------------------

    def _prepare(self, url: str, payload: dict[str, Any], event_id: str | None) -> _Delivery:
        try:
            check_literal(url, self._policy)
        except UrlRefused as exc:
            raise UrlRefused(f"webhook URL {_redacted(url)[:200]!r}: {exc}") from None
        msg_id = event_id if event_id is not None else "msg_" + random_base62()
        if not _EVENT_ID.fullmatch(msg_id):
            raise ValueError(f"invalid webhook event id {msg_id[:200]!r}")
        # Serialised now, so that an unserialisable payload fails the caller, not a task.
        return _Delivery(url, msg_id, orjson.dumps(payload))

    def _admit(self, delivery: _Delivery) -> bool:
        if self._closed or self.pending >= self._max_pending:
            self._dropped += 1
            log.warning("webhook to %s dropped (%d pending)", _redacted(delivery.url), self.pending)
            return False
        self._ensure_loop()
        return True

    def _stored(self, task: asyncio.Task[bool]) -> None:
        self._storing.discard(task)
        self._changed.set()

    async def _store_delivery(self, delivery: _Delivery) -> bool:
        now = self._clock()
        try:
            created = await self._store.enqueue(delivery.msg_id, delivery.url, delivery.body, now)
        except Exception:
            # Never an unretrieved task exception: a store that refuses a write is a drop.
            self._dropped += 1
            log.exception("webhook %s to %s dropped: the store refused it", delivery.msg_id,
                          _redacted(delivery.url))  # fmt: skip
            return False
        if created:
            self._scheduled[delivery.msg_id] = now
            self._wake.set()
            await self._refresh_pending()
        else:
            log.info("webhook %s is already pending or was sent: not sent again", delivery.msg_id)
        return True

    # --- the delivery loop ---------------------------------------------------------------

    def _ensure_loop(self) -> None:
        if self._loop is None and not self._closed:
            self._loop = asyncio.get_running_loop().create_task(self._deliver_forever())

    def _idle(self) -> bool:
        return not (self._storing or self._in_flight or self._scheduled or self._more_due)

    async def _deliver_forever(self) -> None:
        while True:
            self._wake.clear()  # before the pass: a wake during it makes the wait return at once
            try:
                await self._claim_pass()
                if self._store_failing:
                    log.warning("webhook store: claiming works again")
                self._store_failing = False
            except Exception:
                self._more_due = True  # unknown: drain must not report nothing left
                if not self._store_failing:  # logged once per outage, not every poll
                    log.exception("webhook store: could not claim due deliveries; retrying")
                self._store_failing = True
            self._first_pass.set()
            self._changed.set()
            await self._wait_for_work()

    async def _claim_pass(self) -> None:
        free = self._max_concurrent - len(self._in_flight)
        if free <= 0:
            return  # a finishing attempt wakes the loop
        before = dict(self._scheduled)
        now = self._clock()
        claimed = await self._store.claim_due(now, free, self._lease)
        self._more_due = len(claimed) == free
        for delivery in claimed:
            self._scheduled.pop(delivery.id, None)
            # Still being attempted here: only a clock that jumped past the lease returns it.
            if delivery.id not in self._in_flight:
                self._start_attempt(delivery)
        if not self._more_due:
            # What was due, known here before this claim and not handed back, was taken by
            # another process (or finished): stop waiting for it.
            for delivery_id, due in before.items():
                if due <= now and self._scheduled.get(delivery_id) == due:
                    del self._scheduled[delivery_id]
        await self._refresh_pending()

    async def _wait_for_work(self) -> None:
        """Until something is enqueued or finishes, a retry scheduled here comes due (through
        the injected sleep, which tests replace), or the poll interval passes (for what other
        processes, or an earlier one, left in the store)."""
        waits: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._wake.wait()),
            asyncio.create_task(asyncio.sleep(self._poll)),
        ]
        if self._scheduled and len(self._in_flight) < self._max_concurrent:
            delay = min(self._scheduled.values()) - self._clock()
            if delay <= 0:
                waits[0].cancel()
                waits[1].cancel()
                await asyncio.gather(*waits, return_exceptions=True)
                return
            waits.append(asyncio.ensure_future(self._sleep(delay)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _refresh_pending(self) -> None:
        self._count_started += 1
        started = self._count_started
        try:
            count = await self._store.pending()
        except Exception:
            return  # a gauge: the next successful read corrects it
        if started > self._count_applied:
            self._count_applied, self._stored_pending = started, count

    # --- one attempt -----------------------------------------------------------------------

    def _start_attempt(self, delivery: PendingDelivery) -> None:
        task = asyncio.get_running_loop().create_task(self._attempt_and_record(delivery))
        self._in_flight[delivery.id] = task
        task.add_done_callback(functools.partial(self._attempt_done, delivery.id))

    def _attempt_done(self, delivery_id: str, task: asyncio.Task[None]) -> None:
        if self._in_flight.get(delivery_id) is task:
            del self._in_flight[delivery_id]
        self._wake.set()
        self._changed.set()

    async def _attempt_and_record(self, delivery: PendingDelivery) -> None:
        attempt = delivery.attempts + 1
        try:
            outcome = await self._attempt(delivery)
        except asyncio.CancelledError:
            await self._hand_back(delivery)
            raise
        except Exception as exc:
            # A bug here must not retry forever: counted as a final failure, as before.
            log.exception("webhook %s to %s failed", delivery.id, _redacted(delivery.url))
            outcome = _Outcome(False, False, f"{type(exc).__name__}: {exc}")
        try:
            await self._record(delivery, attempt, outcome)
        except Exception:
            # Not recorded: the delivery stays leased and comes due again when the lease ends
            # (delivered at least once; receivers deduplicate on webhook-id).
            log.exception("webhook %s: could not record attempt %d in the store; it is retried "
                          "when its lease ends", delivery.id, attempt)  # fmt: skip

    async def _hand_back(self, delivery: PendingDelivery) -> None:
        """The sender is closing mid-attempt: due again at once (the attempt is not counted), so
        the next start resumes it without waiting for the lease to end."""
        try:
            await self._store.reschedule(
                delivery.id, delivery.attempts, self._clock(), "interrupted: the sender closed"
            )
        except Exception:
            log.warning("webhook %s: not handed back; due again when its lease ends",
                        delivery.id)  # fmt: skip

    async def _record(self, delivery: PendingDelivery, attempt: int, outcome: _Outcome) -> None:
        if outcome.delivered:
            await self._store.finish(delivery.id, True, attempt, outcome.detail)
            self._delivered += 1
        elif not outcome.retryable or attempt >= self._max_attempts:
            await self._store.finish(delivery.id, False, attempt, outcome.detail)
            self._failed += 1
            log.warning("webhook %s to %s given up after attempt %d: %s", delivery.id,
                        _redacted(delivery.url), attempt, outcome.detail)  # fmt: skip
        else:
            delay = self._backoff(attempt)
            if outcome.retry_after is not None:
                delay = min(self._max_delay, outcome.retry_after)
            due = self._clock() + delay
            await self._store.reschedule(delivery.id, attempt, due, outcome.detail)
            self._scheduled[delivery.id] = due
            log.info("webhook %s to %s: %s; retry in %.1fs", delivery.id,
                     _redacted(delivery.url), outcome.detail, delay)  # fmt: skip
        await self._refresh_pending()

    def _backoff(self, attempt: int) -> float:
        """Delay after failed attempt ``attempt`` (1-based): exponential, 'equal jitter'."""
        ceiling = min(self._max_delay, self._base_delay * 2 ** (attempt - 1))
        return float(ceiling / 2 + self._rng.uniform(0, ceiling / 2))

    async def _attempt(self, delivery: PendingDelivery) -> _Outcome:
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, delivery.id, timestamp, delivery.body),
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

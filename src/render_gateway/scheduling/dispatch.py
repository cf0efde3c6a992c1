"""Send one job to a backend: pick a slot, stream progress, retry what a retry can fix.

Retriable failures (connection errors, timeouts, 429/500/502/503/504) are retried with
exponential backoff and jitter, up to ``max_attempts``, preferring backends not yet tried; each
counts against that backend's breaker. Anything else ends the job at once. A cancel asks the
backend to stop (``DELETE …/requests/{id}``, which answers with a signed ``cancelled`` claim);
a backend that cannot do that has its connection closed instead. A ``cancelled`` answer the
gateway did not ask for is the backend stopping the run itself: a retriable
``backend_cancelled`` error, never billed as the customer's cancel. The slot is released on
every path, the caller's own cancellation included.

Replicas share the backends: after the pool picks one, the run also takes one of its shared
slots (``SharedSlots``, ``[gateway.stores] slots``), which count its capacity once across every
replica. A backend whose shared slots are all taken counts as busy, as if it had answered
``busy``: another is tried, and with none left the attempt waits its backoff and tries again;
the last attempt raises NoCapacity (the job waits; a sync request gets 503). The shared slot is
given back on every path, as the pool's is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from render_gateway.inference.backend import (
    BackendError,
    BackendResult,
    Cancelled,
    InferenceBackend,
    Progress,
)
from render_gateway.scheduling.backend_pool import BackendPool, BackendSpec, Lease

log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay_seconds: float = 0.2
    max_delay_seconds: float = 5.0
    run_timeout_seconds: float = 600.0
    cancel_grace_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Backoff before attempt ``attempt + 1``: exponential, with 'equal jitter'."""
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (attempt - 1))
        return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


class SharedSlots(Protocol):
    """A backend's slots shared by the replicas (``stores.backend_slots.SlotKeeper``)."""

    async def take(self, backend_id: str, capacity: int) -> str | None:
        """A token for one of the backend's slots, or None while all are taken."""
        ...

    async def give_back(self, backend_id: str, token: str) -> None:
        """Free the token's slot; never raises (a slot not given back lapses)."""
        ...


# What a dispatch that found every shared slot taken reports (nothing was sent).
SLOTS_TAKEN = "every slot of the backends left is held by another replica's run"


class NoCapacity(Exception):
    """Every backend for the model is busy, unhealthy or open: the job waits (or a sync 503)."""


def _given_up(last_error: BackendError, family: str, model: str) -> Exception:
    """What a dispatch that ran out of attempts raises. A backend that answered ``busy`` has
    every slot taken by runs this process did not send (replicas share the backends; with
    ``memory://`` slots each counts their capacity for itself): that is no capacity — the job
    waits for a slot (a sync request gets the 503 ``no_capacity``) — not a failure of the
    job."""
    if last_error.code == "busy":
        return NoCapacity(f"every backend for {family}/{model} is busy: {last_error}")
    return last_error


async def _from_client(step: Awaitable[_T], backend_id: str) -> _T:
    """A client's answer; an exception no client foresaw (a parser's or the client's own bug)
    becomes a final BackendError: the model may have run, so the request ends as an error —
    recorded once — rather than crashing its caller."""
    try:
        return await step
    except BackendError:
        raise
    except Exception as exc:
        log.exception("backend %s: unreadable answer", backend_id)
        raise BackendError(
            "the backend's answer could not be read", code="backend_protocol", retriable=False
        ) from exc


def _stopped_by_backend(backend_id: str) -> BackendError:
    """A run the backend ended as cancelled though the gateway asked no such thing (its
    operator stopped it, or the backend lies): not the customer's cancel, so not billed as
    one — an error, which another backend may do better."""
    log.warning("backend %s cancelled a run the gateway did not cancel", backend_id)
    return BackendError(
        "the backend stopped the run on its own", code="backend_cancelled", retriable=True
    )


@dataclass(frozen=True)
class DispatchOutcome:
    result: BackendResult | Cancelled
    backend_id: str
    attempts: int

    @property
    def cancelled(self) -> bool:
        return isinstance(self.result, Cancelled)


ClientFor = Callable[[BackendSpec], InferenceBackend]
# Awaited for each progress event: charging a budget or publishing an event may cross a network.
OnProgress = Callable[[Progress], Awaitable[None]]


async def _ignore_progress(_event: Progress) -> None:
    return None


class Dispatcher:
    def __init__(
        self,
        pool: BackendPool,
        client_for: ClientFor,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        slots: SharedSlots | None = None,
    ) -> None:
        self._pool = pool
        self._slots = slots  # None: the pool's count alone (one process, no shared backends)
        self._client_for = client_for
        self._policy = policy or RetryPolicy()
        self._rng = rng or random.Random()

    async def run(
        self,
        family: str,
        model: str,
        generation: bytes,
        request_id: str,
        on_progress: OnProgress = _ignore_progress,
        cancel: asyncio.Event | None = None,
        backend_type: str | None = None,
        first_try: asyncio.Event | None = None,
    ) -> DispatchOutcome:
        """``first_try`` is set once the first attempt holds a slot or found none (the scheduler
        claims its next job then)."""
        cancel = cancel or asyncio.Event()
        tried: set[str] = set()
        last_error: BackendError | None = None
        serving = {b.spec.id for b in self._pool.serving(family, model, backend_type)}
        for attempt in range(1, self._policy.max_attempts + 1):
            if cancel.is_set():
                return DispatchOutcome(Cancelled(request_id, {}), "", attempt - 1)
            lease, token, full = await self._acquire(family, model, backend_type, tried, serving)
            if first_try is not None:
                first_try.set()
            if lease is None and not full:
                if last_error is not None:
                    raise _given_up(last_error, family, model)
                raise NoCapacity(f"no backend for {family}/{model} can take a job now")
            if lease is None:
                # Every slot left is held by other replicas' runs: as if each backend had
                # answered busy (nothing was sent), wait and try again.
                last_error = BackendError(SLOTS_TAKEN, status=503, code="busy", retriable=True)
            else:
                try:
                    outcome = await self._try(lease, generation, request_id, on_progress, cancel)
                finally:
                    if token is not None and self._slots is not None:
                        await self._slots.give_back(lease.backend.spec.id, token)
                if isinstance(outcome, DispatchOutcome):
                    return DispatchOutcome(outcome.result, outcome.backend_id, attempt)
                tried.add(lease.backend.spec.id)
                last_error = outcome
            if attempt < self._policy.max_attempts:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cancel.wait(), self._policy.delay(attempt, self._rng))
        assert last_error is not None
        raise _given_up(last_error, family, model)

    async def _try(
        self,
        lease: Lease,
        generation: bytes,
        request_id: str,
        on_progress: OnProgress,
        cancel: asyncio.Event,
    ) -> DispatchOutcome | BackendError:
        """One attempt on the lease's backend, the lease released on every path: the outcome
        (its ``attempts`` for the caller to fill), or the retriable error to try again after."""
        with lease:
            try:
                result = await self._attempt(lease, generation, request_id, on_progress, cancel)
            except BackendError as error:
                error.backend_id = error.backend_id or lease.backend.spec.id
                if cancel.is_set():  # the stream broke because we stopped it: no retry
                    return DispatchOutcome(Cancelled(request_id, {}), lease.backend.spec.id, 0)
                if not error.retriable:
                    raise  # the backend answered; the request itself was refused
                if error.code == "busy":
                    # Alive and answering, its slots taken by other replicas' runs: not a
                    # failure, so N replicas sharing a backend never open its breaker.
                    lease.release()
                else:
                    lease.failed()
                return error
            if isinstance(result, BackendResult):
                lease.succeeded()
            return DispatchOutcome(result, lease.backend.spec.id, 0)

    async def _acquire(
        self,
        family: str,
        model: str,
        backend_type: str | None,
        tried: set[str],
        serving: set[str],
    ) -> tuple[Lease | None, str | None, list[str]]:
        """A lease from the pool and, with shared slots, a slot's token on the same backend;
        (None, None, the backends found full) when none can take the job. A backend whose
        shared slots are all taken is passed over for this attempt, as a ``busy`` one is."""
        full: list[str] = []
        while True:
            # Prefer a backend not tried yet; when all have been, any may take the retry.
            avoid = tried.union(full)
            exclude = frozenset(avoid) if avoid < serving else frozenset(full)
            lease = self._pool.acquire(family, model, backend_type, exclude)
            if lease is None or self._slots is None:
                return lease, None, full
            spec = lease.backend.spec
            try:
                token = await self._slots.take(spec.id, spec.capacity)
            except BaseException:
                lease.release()
                raise
            if token is not None:
                return lease, token, full
            lease.release()  # no verdict: a half-open breaker gets its probe back
            full.append(spec.id)

    async def _attempt(
        self,
        lease: Lease,
        generation: bytes,
        request_id: str,
        on_progress: OnProgress,
        cancel: asyncio.Event,
    ) -> BackendResult | Cancelled:
        client = self._client_for(lease.backend.spec)
        timeout = self._policy.run_timeout_seconds

        backend_id = lease.backend.spec.id

        async def call() -> BackendResult | Cancelled:
            if not lease.backend.spec.streaming:
                return await _from_client(
                    client.infer(lease.model, generation, request_id, timeout), backend_id
                )
            stream = client.generate_stream(lease.model, generation, request_id, timeout)
            try:
                while True:
                    event = await _from_client(anext(stream, None), backend_id)
                    if event is None:
                        break
                    if isinstance(event, Cancelled) and not cancel.is_set():
                        raise _stopped_by_backend(backend_id)
                    if not isinstance(event, Progress):
                        return event
                    await on_progress(event)
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            raise BackendError("the stream ended without a result", retriable=True)

        work = asyncio.ensure_future(call())
        cancelled = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait({work, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                return work.result()
            # Cancelled while running: ask the backend to stop and wait for its claim.
            if await client.cancel(lease.model, request_id):
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(
                        asyncio.shield(work), self._policy.cancel_grace_seconds
                    )
            return Cancelled(request_id, {})  # closing the connection stops the run
        finally:
            cancelled.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work

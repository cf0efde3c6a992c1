"""Backend slots: a backend's ``capacity`` counted once across every replica that sends it runs.

Each replica's ``BackendPool`` counts the runs it sent itself; with N replicas on the same
backends that lets N × capacity runs at a backend, which answers the extras 503 ``busy``. A run
therefore also takes one of the backend's shared slots (``take``) before it is sent, and gives it
back (``give_back``) when it ends. A slot is a lease: it lasts ``lease_seconds`` from its last
renewal (``renew``) by the store's clock, so that the slots of a replica that died (or lost its
Redis for longer than a lease) are free again within a lease, without anyone giving them back.
``SlotKeeper`` is what a process uses: it remembers the tokens it holds and renews them every
third of a lease.

``memory://`` counts this process's runs only (what the pool already does; a single process
needs nothing more); ``redis://host:port/db`` (``rediss://`` for TLS) is shared by every
replica. Expiry is judged by the store's injected clock, wall time by default: replicas on
several machines must agree on it (NTP), to well within a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from render_gateway.stores.redis_client import KEY_PREFIX, open_redis
from render_gateway.stores.unavailable import StoreUnavailable
from render_gateway.stores.urls import parse_store_url

log = logging.getLogger(__name__)

# How long a slot is held without renewal: a dead replica's slots are free after at most this,
# so it is short (a killed replica's worker stops its run at once, when the connection drops,
# and stands idle until then: one chaos run with 30 s completed 425 jobs, against 674 without
# shared slots and 595 with 10 s: docs/BENCHMARKS.md), yet two renewals
# (every third of it) fit in it even when one waits out the Redis client's 5 s read timeout.
SLOT_LEASE_SECONDS = 10.0


class BackendSlots(Protocol):
    async def take(self, backend_id: str, capacity: int) -> str | None:
        """One of the backend's ``capacity`` slots, held for a lease from now: its token, or
        None while ``capacity`` unexpired slots are held. Atomic: of any number of concurrent
        takes, at most ``capacity`` minus those held succeed."""
        ...

    async def give_back(self, backend_id: str, token: str) -> None:
        """Free the slot at once. A token given back again, or one that expired, is ignored."""
        ...

    async def renew(self, backend_id: str, tokens: Iterable[str]) -> frozenset[str]:
        """Hold each of ``tokens`` for a lease from now; the tokens that were still held (an
        expired or given-back token is not taken again: its slot may be someone else's)."""
        ...

    async def close(self) -> None: ...


def check_lease(lease_seconds: float) -> None:
    if not lease_seconds > 0:  # also refuses NaN
        raise ValueError(f"a slot's lease_seconds must be positive, not {lease_seconds!r}")


def open_backend_slots(
    url: str,
    clock: Callable[[], float] = time.time,
    *,
    lease_seconds: float = SLOT_LEASE_SECONDS,
    key_prefix: str = KEY_PREFIX,
) -> BackendSlots:
    """The slot store ``url`` names (``[gateway.stores] slots``). ``key_prefix`` is the
    namespace of a Redis store's keys (tests keep apart by it); memory ignores it."""
    # Imported here: the implementations import ``check_lease`` from this module.
    from render_gateway.stores.memory_backend_slots import MemoryBackendSlots
    from render_gateway.stores.redis_backend_slots import RedisBackendSlots

    check_lease(lease_seconds)
    parsed = parse_store_url("slots", url, ("memory", "redis", "rediss"))
    if parsed.scheme == "memory":
        return MemoryBackendSlots(clock, lease_seconds)
    return RedisBackendSlots(open_redis(url), clock, lease_seconds, key_prefix=key_prefix)


# A token that holds no slot: what ``SlotKeeper.take`` hands out while the store cannot be
# reached (the run goes ahead, bounded by the pool and by the backend's own ``busy``).
UNSHARED = ""


class SlotKeeper:
    """This process's slots: taken and given back through the store, renewed every third of a
    lease while held. An unreachable store fails open: the run goes ahead unshared (each
    replica's pool still counts its own, and a full backend answers ``busy``, which waits), so
    that a Redis outage does not also stop every run that could still be made."""

    def __init__(self, slots: BackendSlots, lease_seconds: float = SLOT_LEASE_SECONDS) -> None:
        check_lease(lease_seconds)
        self._slots = slots
        self._renew_every = lease_seconds / 3
        self._held: dict[str, set[str]] = {}  # backend id → tokens this process holds
        self._renewing: asyncio.Task[None] | None = None

    def held(self, backend_id: str) -> frozenset[str]:
        return frozenset(self._held.get(backend_id, ()))

    async def take(self, backend_id: str, capacity: int) -> str | None:
        """A slot's token; None while the backend's shared slots are all taken; ``UNSHARED``
        while the store cannot be reached."""
        try:
            token = await self._slots.take(backend_id, capacity)
        except StoreUnavailable as exc:
            log.warning("backend slots unreachable, %s runs unshared: %s", backend_id, exc)
            return UNSHARED
        if token is not None:
            self._held.setdefault(backend_id, set()).add(token)
            if self._renewing is None:
                self._renewing = asyncio.create_task(self._renew_loop(), name="slot-renewal")
        return token

    async def give_back(self, backend_id: str, token: str) -> None:
        """Never raises: a slot not given back lapses within a lease (it is no longer renewed
        from here on)."""
        if token == UNSHARED:
            return
        self._held.get(backend_id, set()).discard(token)
        try:
            await self._slots.give_back(backend_id, token)
        except StoreUnavailable as exc:
            log.warning("slot %s of %s not given back, it lapses: %s", token, backend_id, exc)

    async def renew_held(self) -> None:
        """Renew every slot held; one that lapsed meanwhile (the store was out of reach for a
        lease) is forgotten: its run goes on, counted again only by this process's pool."""
        for backend_id, tokens in list(self._held.items()):
            if not tokens:
                continue
            kept = await self._slots.renew(backend_id, tuple(tokens))
            if lapsed := tokens - kept:
                log.warning("%d slot(s) of %s lapsed while held", len(lapsed), backend_id)
                tokens.difference_update(lapsed)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every)
            try:
                await self.renew_held()
            except StoreUnavailable as exc:
                log.warning("backend slots not renewed: %s", exc)
            except Exception:  # a bug must not end the renewals of every later slot
                log.exception("backend slots not renewed")

    async def close(self) -> None:
        """Stop renewing and close the store (the runs have ended: their slots were given back;
        any left lapse)."""
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        await self._slots.close()

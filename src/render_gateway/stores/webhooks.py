"""Durable webhook deliveries: what is still to be sent, and when, kept outside the process so
that a restart (or a kill -9) resumes them, and several replicas share them without sending
one twice.

A delivery is keyed by its event id (the ``webhook-id`` receivers deduplicate on): enqueueing
an id that is pending or finished does nothing, so one event never goes out twice. Senders take
due deliveries with ``claim_due``, which leases them (pushes their due time to the end of the
lease) in the same atomic step: another claimer does not get them while they are in flight, and
a claimer that dies lets them come due again when the lease runs out.

``memory://`` serves one process (lost with it); ``sqlite:///abs/path.db`` is durable and safe
across the processes of one machine; ``redis://`` (or ``rediss://``) is shared by every replica
(stores/redis_webhooks.py). Finished ids are kept ``keep_finished_seconds`` (judged by
the store's clock) and then forgotten, so the record stays small.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from render_gateway.stores.urls import parse_store_url

# A week: far longer than any retry schedule, so a repeated event is still recognised.
KEEP_FINISHED_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True)
class PendingDelivery:
    id: str  # the event id (e.g. "j_….complete"): idempotent; also the webhook-id
    url: str
    body: bytes
    attempts: int  # attempts made so far
    next_attempt_at: float  # when claimed: the end of the claim's lease
    created_at: float


class WebhookDeliveries(Protocol):
    async def enqueue(self, delivery_id: str, url: str, body: bytes, now: float) -> bool:
        """Add a delivery due at ``now``; False (and nothing changes) when that id is already
        pending or finished, so the same event is never sent twice."""
        ...

    async def claim_due(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[PendingDelivery]:
        """Up to ``limit`` deliveries due at ``now`` (earliest due first, then oldest), each
        pushed to ``now + lease_seconds`` in the same atomic step, so that no other claimer
        (this process or another) takes them while they are in flight."""
        ...

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, last_error: str
    ) -> None:
        """Record a failed attempt: ``attempts`` made so far, next due at ``next_attempt_at``.
        An id that is not pending is left alone."""
        ...

    async def finish(self, delivery_id: str, delivered: bool, attempts: int, detail: str) -> None:
        """The delivery is no longer pending (delivered, or given up on); its id is remembered
        so that enqueueing it again does nothing."""
        ...

    async def pending(self) -> int:
        """How many deliveries are pending (due or not, leased or not)."""
        ...

    async def close(self) -> None: ...


def check_claim(limit: int, lease_seconds: float) -> None:
    if limit < 0 or not lease_seconds > 0:  # also refuses a NaN lease
        raise ValueError(f"claim_due needs limit >= 0 and lease_seconds > 0, not {limit}, "
                         f"{lease_seconds!r}")  # fmt: skip


def open_webhook_store(
    url: str,
    clock: Callable[[], float] = time.time,
    keep_finished_seconds: float = KEEP_FINISHED_SECONDS,
) -> WebhookDeliveries:
    """The delivery store ``url`` names (``[gateway.stores] webhooks``). Opening does no I/O:
    an SQLite file is opened, in a thread, by the first operation."""
    # Imported here: the implementations import ``check_claim`` from this module.
    from render_gateway.stores.memory_webhooks import MemoryWebhookDeliveries
    from render_gateway.stores.sqlite_webhooks import SqliteWebhookDeliveries

    parsed = parse_store_url("webhooks", url, ("sqlite", "memory", "redis", "rediss"))
    if parsed.scheme == "memory":
        return MemoryWebhookDeliveries(clock, keep_finished_seconds)
    if parsed.scheme in ("redis", "rediss"):
        from render_gateway.stores.redis_client import open_redis
        from render_gateway.stores.redis_webhooks import RedisWebhookDeliveries

        return RedisWebhookDeliveries(open_redis(url), clock, keep_finished_seconds)
    return SqliteWebhookDeliveries(parsed.sqlite_path(), clock, keep_finished_seconds)

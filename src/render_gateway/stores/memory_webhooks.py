"""``memory://`` webhook deliveries: one process's dicts, lost with it. Each operation runs
without an await, so it is atomic on the event loop."""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable

from render_gateway.stores.webhooks import KEEP_FINISHED_SECONDS, PendingDelivery, check_claim


class MemoryWebhookDeliveries:
    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        keep_finished_seconds: float = KEEP_FINISHED_SECONDS,
    ) -> None:
        self._clock, self._keep_finished = clock, keep_finished_seconds
        self._pending: dict[str, PendingDelivery] = {}
        # id → when it finished, oldest first (insertion order), so expiry pops from the front.
        self._finished: OrderedDict[str, float] = OrderedDict()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the webhook store is closed")

    def _forget_old_finished(self) -> None:
        horizon = self._clock() - self._keep_finished
        while self._finished and next(iter(self._finished.values())) < horizon:
            self._finished.popitem(last=False)

    async def enqueue(self, delivery_id: str, url: str, body: bytes, now: float) -> bool:
        self._check_open()
        self._forget_old_finished()
        if delivery_id in self._pending or delivery_id in self._finished:
            return False
        self._pending[delivery_id] = PendingDelivery(delivery_id, url, body, 0, now, now)
        return True

    async def claim_due(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[PendingDelivery]:
        check_claim(limit, lease_seconds)
        self._check_open()
        due = sorted(
            (d for d in self._pending.values() if d.next_attempt_at <= now),
            key=lambda d: (d.next_attempt_at, d.created_at, d.id),
        )[:limit]
        claimed = [dataclasses.replace(d, next_attempt_at=now + lease_seconds) for d in due]
        for delivery in claimed:
            self._pending[delivery.id] = delivery
        return claimed

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, last_error: str
    ) -> None:
        self._check_open()
        current = self._pending.get(delivery_id)
        if current is not None:
            self._pending[delivery_id] = dataclasses.replace(
                current, attempts=attempts, next_attempt_at=next_attempt_at
            )

    async def finish(self, delivery_id: str, delivered: bool, attempts: int, detail: str) -> None:
        self._check_open()
        self._pending.pop(delivery_id, None)
        self._finished.pop(delivery_id, None)  # re-inserted at the end: its time is now
        self._finished[delivery_id] = self._clock()
        self._forget_old_finished()

    async def pending(self) -> int:
        self._check_open()
        return len(self._pending)

    async def close(self) -> None:
        self._closed = True

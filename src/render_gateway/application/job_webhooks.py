"""Which of a job's moments its webhook hears, and the delivery for each.

A job submitted with a ``webhook`` gets one delivery when it ends (``completed``: the terminal
view, as before). ``webhook_events_filter`` (Replicate's name) chooses among three moments:

* ``start`` — the run started (the view says ``running``);
* ``progress`` — the run reported a step; at most one delivery per ``PROGRESS_EVERY_S`` a job
  (a receiver is not a progress bar: SSE and ``/ws`` are), the last step always reaching it as
  the ``completed`` delivery;
* ``completed`` — the job ended, whichever way (complete, error, cancelled).

Each delivery has its own ``webhook-id`` (``<job>.start``, ``<job>.progress.<step>``,
``<job>.<status>``): a receiver deduplicates retries by it, and the store enqueues an id once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from render_gateway.application.job_views import job_view
from render_gateway.application.webhooks import WebhookSender
from render_gateway.core.jobs import Job

log = logging.getLogger(__name__)

WebhookEvent = Literal["start", "progress", "completed"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("start", "progress", "completed")
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("completed",)
PROGRESS_EVERY_S = 1.0


def webhook_events(job: Job) -> frozenset[str]:
    """The moments ``job``'s webhook hears (none without a webhook)."""
    if not job.webhook:
        return frozenset()
    chosen = job.extra.get("webhook_events")
    if not isinstance(chosen, list):
        return frozenset(DEFAULT_WEBHOOK_EVENTS)
    return frozenset(str(e) for e in chosen) & frozenset(WEBHOOK_EVENTS)


class JobWebhooks:
    def __init__(self, sender: WebhookSender, asset_url: Callable[[str], str]) -> None:
        self._sender, self._asset_url = sender, asset_url
        self._last_progress: dict[str, float] = {}  # job id → when its last progress went

    async def ended(self, job: Job, progress: float) -> bool:
        """The ``completed`` delivery of an ended job, durable when this returns True (also
        when the job's webhook does not hear it: nothing to send); False: not stored."""
        self._last_progress.pop(job.id, None)
        if "completed" not in webhook_events(job):
            return True
        sent = self._send(job, self._view(job, progress), f"{job.id}.{job.status.value}")
        # None: refused by its form (the policy changed since the submit): it can never be
        # stored, so it must not hold the job's other follow-ups back either.
        return True if sent is None else await sent

    # A run's own moments are handed to the sender and not awaited: its store write must not
    # hold up the run's progress stream (the sender stores it in the background, durably).
    def started(self, job: Job) -> None:
        if "start" in webhook_events(job):
            self._send(job, self._view(job, 0.0), f"{job.id}.start")

    def progressed(self, job: Job, progress: float, step: int) -> None:
        if "progress" not in webhook_events(job):
            return
        now = time.monotonic()
        if now - self._last_progress.get(job.id, float("-inf")) < PROGRESS_EVERY_S:
            return
        self._last_progress[job.id] = now
        self._send(job, self._view(job, progress), f"{job.id}.progress.{step}")

    def forget(self, job_id: str) -> None:
        """The run ended here: drop its progress throttle."""
        self._last_progress.pop(job_id, None)

    def _send(
        self, job: Job, payload: dict[str, Any], event_id: str
    ) -> asyncio.Future[bool] | None:
        """Hand the delivery to the sender; None (logged) when it refuses the URL or the id at
        once — a webhook must never break a run or an end."""
        assert job.webhook is not None
        try:
            return self._sender.send(job.webhook, payload, event_id=event_id)
        except ValueError as exc:  # UrlRefused included
            log.warning("job %s: webhook %s not sent: %s", job.id, event_id, exc)
            return None

    def _view(self, job: Job, progress: float) -> dict[str, Any]:
        return job_view(job, None, progress, None, asset_url=self._asset_url)

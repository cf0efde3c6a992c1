"""Server-Sent Events responses: what OpenAPI says they are, and streams that end when their
caller's credentials stop being valid (a revoked key, an expired token)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from sse_starlette import EventSourceResponse

T = TypeVar("T")

# Event ids are counters from 1; 18 digits keep any value inside 64 bits.
LAST_EVENT_ID_PATTERN = r"^[0-9]{1,18}$"
EVENT_NAMES = ("position", "started", "progress", "preview", "complete", "error")
# How often a long-lived stream asks again whether its caller is still allowed in.
STREAM_AUTH_RECHECK_SECONDS = 2.0


class EventStream(EventSourceResponse):
    """``text/event-stream``, as the route's OpenAPI entry says."""

    media_type = "text/event-stream"


EVENT_STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the job's events (text/event-stream); closes after the terminal event",
        # The schema of one event, as SSE parsers see it; ``data`` holds the JSON text of the
        # event's object (docs/API.md lists them).
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "event": {"enum": list(EVENT_NAMES)},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                        "id": {"type": "string", "pattern": LAST_EVENT_ID_PATTERN},
                    },
                    "required": ["event", "data"],
                }
            }
        },
    }
}


async def until_refused(
    events: AsyncIterator[T], allowed: Callable[[], Awaitable[bool]], every: float
) -> AsyncIterator[T]:
    """``events`` until they end or, checked at least every ``every`` seconds while waiting and
    between items, ``allowed()`` says no."""
    pending: asyncio.Task[T] | None = None
    checked = time.monotonic()

    async def next_item() -> T:
        return await anext(events)

    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(next_item())
            done, _ = await asyncio.wait({pending}, timeout=every)
            if time.monotonic() - checked >= every or not done:
                checked = time.monotonic()
                if not await allowed():
                    return
            if not done:
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                pending = None
                return
            pending = None
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()

"""The one failure every store may raise when what holds it cannot be reached: the HTTP layer
answers it with 503 ``store_unavailable`` and a Retry-After (api/http.py), the background loops
log it and try again. It names no library, so the layers above need not import Redis's."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """The store could not be reached (refused, timed out, still loading its data). Nothing
    was acknowledged: a write that raised this may or may not have happened, so callers that
    accepted nothing yet refuse, and never answer as if it had been stored."""

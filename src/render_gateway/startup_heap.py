"""Keep what a server built at start out of the garbage collector's full passes.

A started gateway holds ~200k tracked objects that live as long as the process (modules, the
FastAPI app and its routes, pydantic's validators, chDB and pandas). CPython's full collection
walks every tracked object, ~40-150 ms here, and runs again whenever enough new objects have
survived (a queue filling does that), stalling every request in flight: the p99 of a 1 ms
lookup. ``gc.freeze()`` moves what exists now into a permanent generation the collector never
walks; objects made later are collected as before (docs/BENCHMARKS.md, issue 16).
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once (so start-up garbage is not kept), then freeze the rest; the count frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

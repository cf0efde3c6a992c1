"""Recorded runs of the gateway's own offline verification (POST /audit/verifications).

Each run is one JSON object in the audit store under ``verifications/``, named by its start time
so that a listing is in time order; replicas sharing the store see each other's runs. The prefix
lies outside what verification reads (``log/`` and the CAS's ``blobs/``), so recording a run
never changes what the next one verifies.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import orjson

from render_gateway.stores.objects import ObjectStore

log = logging.getLogger(__name__)

VERIFICATIONS_PREFIX = "verifications/"


def run_key(started_at: datetime, run_id: str) -> str:
    return f"{VERIFICATIONS_PREFIX}{started_at:%Y%m%dT%H%M%S%fZ}-{run_id}.json"


def record_verification(objects: ObjectStore, started_at: datetime, run: dict[str, Any]) -> None:
    objects.put_new(run_key(started_at, run["id"]), orjson.dumps(run, option=orjson.OPT_SORT_KEYS))


def recent_verifications(objects: ObjectStore, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` runs, newest first (an unreadable object is skipped, and logged)."""
    runs: list[dict[str, Any]] = []
    for key in reversed(objects.list(VERIFICATIONS_PREFIX)):
        if len(runs) >= limit:
            break
        try:
            run = orjson.loads(objects.get(key))
        except orjson.JSONDecodeError:
            log.warning("verification record %s is not JSON; skipped", key)
            continue
        if isinstance(run, dict):
            runs.append(run)
    return runs

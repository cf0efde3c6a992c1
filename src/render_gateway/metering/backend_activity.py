"""What the hot path saw of each backend lately: the device it last ran on and its latest
failures (GET /backends).

Both read the raw table over a recent window only (``ACTIVITY_HOURS``): the table is
partitioned by day, so the window prunes it to a day or two whatever the retention, and a
backend idle for longer simply shows no device and no failures. The rollups do not fit: none
is keyed by backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from render_gateway.metering.queries import TimeRange
from render_gateway.metering.store import UsageStore

ACTIVITY_HOURS = 24
FAILURES_PER_BACKEND = 10


@dataclass(frozen=True)
class BackendFailure:
    at: datetime
    error_code: str | None
    request_id: str
    job_id: str | None  # None: a synchronous request


@dataclass
class BackendActivity:
    device_uuid: str | None = None  # the device of its latest request that named one
    recent_failures: list[BackendFailure] = field(default_factory=list)  # newest first


LAST_DEVICE_SQL = """
SELECT backend, argMax(device_uuid, timestamp)
FROM inference_events
WHERE timestamp >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
    AND timestamp < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')
    AND backend != '' AND device_uuid != ''
GROUP BY backend
"""

# Failed requests: status error or timeout (a cancellation is the caller's, not the backend's).
RECENT_FAILURES_SQL = """
SELECT backend, toUnixTimestamp64Micro(timestamp), error_code, request_id, job_id
FROM inference_events
WHERE timestamp >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
    AND timestamp < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')
    AND backend != '' AND status IN ('error', 'timeout')
ORDER BY backend, timestamp DESC
LIMIT {per_backend:UInt32} BY backend
"""


def activity_window(now: datetime) -> TimeRange:
    # A little past now: a record's timestamp is its end, stamped by another replica's clock.
    return TimeRange(now - timedelta(hours=ACTIVITY_HOURS), now + timedelta(minutes=5))


def backend_activity(store: UsageStore, window: TimeRange) -> dict[str, BackendActivity]:
    """Backend id → what the hot path holds of it in ``window`` (absent: nothing)."""
    found: dict[str, BackendActivity] = {}
    for backend, device in store.rows(LAST_DEVICE_SQL, window.parameters()):
        found.setdefault(str(backend), BackendActivity()).device_uuid = str(device)
    parameters = {**window.parameters(), "per_backend": FAILURES_PER_BACKEND}
    for backend, at_us, code, request_id, job_id in store.rows(RECENT_FAILURES_SQL, parameters):
        failure = BackendFailure(
            datetime.fromtimestamp(int(at_us) / 1_000_000, UTC),
            None if code is None else str(code),
            str(request_id),
            str(job_id) or None,
        )
        found.setdefault(str(backend), BackendActivity()).recent_failures.append(failure)
    return found

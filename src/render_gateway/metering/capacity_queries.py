"""What capacity planning reads from the hot path: per model, the requests that ended in a
window, the moments of their service time, their queue waits, and arrivals per minute.

Service time is ``inference_time_us``: from the request taking a backend slot to its end, as
the gateway timed it (every status: an error or a cancel held its slot too). Queue wait is
``queue_time_us``: from arrival to taking the slot. A record's queue interval is
``[timestamp − total_time, timestamp − inference_time]``; the time-averaged queue length counts
only the part of each interval inside the window, so that it is an independent measurement to
hold against Little's law (Σ queue_time / window would equal λ·W̄q by construction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from render_gateway.metering.queries import TimeRange
from render_gateway.metering.store import UsageStore

MINUTE_US = 60_000_000

# No result aliases that shadow a column (ClickHouse resolves the alias instead).
TRAFFIC_SQL = """
SELECT model_name, count(),
    avg(inference_time_us), varSampStable(toFloat64(inference_time_us)),
    avg(queue_time_us),
    sum(greatest(0, toUnixTimestamp64Micro(timestamp) - toInt64(inference_time_us)
        - greatest(toUnixTimestamp64Micro(timestamp) - toInt64(total_time_us), {start_us:Int64})))
FROM inference_events
WHERE timestamp >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
    AND timestamp < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')
    AND ({model:Nullable(String)} IS NULL OR model_name = {model:Nullable(String)})
GROUP BY model_name
ORDER BY model_name
"""

# Arrivals (timestamp − total_time) per whole minute from the window's start.
ARRIVALS_SQL = """
SELECT model_name,
    intDiv(toUnixTimestamp64Micro(timestamp) - toInt64(total_time_us) - {start_us:Int64},
        {minute_us:Int64}) AS minute_index,
    count()
FROM inference_events
WHERE timestamp >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
    AND timestamp < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')
    AND toUnixTimestamp64Micro(timestamp) - toInt64(total_time_us) >= {start_us:Int64}
    AND ({model:Nullable(String)} IS NULL OR model_name = {model:Nullable(String)})
GROUP BY model_name, minute_index
"""


@dataclass(frozen=True)
class ModelTraffic:
    model_name: str
    requests: int
    service_mean_s: float
    service_variance_s2: float  # sample variance; 0 with a single request
    mean_wait_s: float
    queue_length: float  # time-averaged number waiting over the window
    minute_counts: tuple[int, ...]  # arrivals in each whole minute of the window


def model_traffic(
    store: UsageStore, time_range: TimeRange, model_name: str | None = None
) -> list[ModelTraffic]:
    """Per model with requests that ended in ``time_range``, in model order."""
    parameters = {**time_range.parameters(), "model": model_name, "minute_us": MINUTE_US}
    window_s = (time_range.end - time_range.start).total_seconds()
    minutes = int(window_s // 60)
    counts: dict[str, list[int]] = {}
    for model, index, n in store.rows(ARRIVALS_SQL, parameters):
        if 0 <= int(index) < minutes:  # whole minutes only: the last partial one is left out
            counts.setdefault(str(model), [0] * minutes)[int(index)] = int(n)
    found = []
    for model, n, mean_us, variance_us2, wait_us, queued_us in store.rows(TRAFFIC_SQL, parameters):
        variance = float(variance_us2)
        found.append(
            ModelTraffic(
                str(model),
                int(n),
                float(mean_us) / 1e6,
                variance / 1e12 if math.isfinite(variance) else 0.0,
                float(wait_us) / 1e6,
                int(queued_us) / 1e6 / window_s,
                tuple(counts.get(str(model), [0] * minutes)),
            )
        )
    return found

"""Time series for charts (GET /usage/series): requests, errors, GPU-seconds and cost per
bucket, for everything or per customer or per model.

From ``metrics_1m``: it is keyed by customer, model and minute, which covers every grouping and
filter here, and it is what GET /usage reads, so a series over a range sums to that range's
usage. Buckets are whole minutes, hours or UTC days counted from the epoch; a bucket's minutes
are those that start inside the range (the first and last bucket may be partial). Buckets
without a request are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from render_gateway.metering.queries import QueryError, TimeRange
from render_gateway.metering.store import UsageStore

BUCKET_SECONDS = {"minute": 60, "hour": 3600, "day": 86_400}
SERIES_GROUPINGS = ("none", "customer", "model")
# A week of minutes: more points than that is not a chart, and not a cheap answer.
MAX_BUCKETS = 7 * 24 * 60


def default_bucket(time_range: TimeRange) -> str:
    """minute for ranges up to 6 hours, hour up to 7 days, else day."""
    span = time_range.end - time_range.start
    if span <= timedelta(hours=6):
        return "minute"
    return "hour" if span <= timedelta(days=7) else "day"


def parse_bucket(text: str | None, time_range: TimeRange) -> str:
    bucket = default_bucket(time_range) if text is None else text.strip()
    if bucket not in BUCKET_SECONDS:
        raise QueryError(f"bucket: unknown {bucket!r} (allowed: {', '.join(BUCKET_SECONDS)})")
    span = (time_range.end - time_range.start).total_seconds()
    if span / BUCKET_SECONDS[bucket] > MAX_BUCKETS:
        raise QueryError(
            f"bucket={bucket} over this range makes more than {MAX_BUCKETS} points;"
            " choose a larger bucket or a shorter range"
        )
    return bucket


def parse_series_group_by(text: str | None) -> str:
    grouping = "none" if text is None else text.strip()
    if grouping not in SERIES_GROUPINGS:
        raise QueryError(f"group_by: unknown {grouping!r} (allowed: {', '.join(SERIES_GROUPINGS)})")
    return grouping


@dataclass(frozen=True)
class SeriesPoint:
    t: datetime  # the bucket's start (UTC)
    requests: int
    errors: int  # status error or timeout (cancellations are not errors)
    timeouts: int
    gpu_seconds: float  # billed GPU-seconds, as GET /usage counts them
    cost_nanos: int
    all_gpu_seconds: float  # every request's, billable or not


SERIES_SQL = """
SELECT multiIf({group:String} = 'customer', toString(customer_id),
        {group:String} = 'model', toString(model_name), 'all') AS series_key,
    intDiv(toUnixTimestamp(minute), {bucket_seconds:UInt32}) * {bucket_seconds:UInt32}
        AS bucket_start,
    sum(requests), sum(errors) + sum(timeouts), sum(timeouts), sum(billed_gpu_seconds),
    sum(cost_nanos), sum(gpu_seconds)
FROM metrics_1m
WHERE minute >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
    AND minute < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')
    AND ({customer:Nullable(String)} IS NULL OR customer_id = {customer:Nullable(String)})
    AND ({model:Nullable(String)} IS NULL OR model_name = {model:Nullable(String)})
GROUP BY series_key, bucket_start
ORDER BY series_key, bucket_start
"""


def usage_series(
    store: UsageStore,
    time_range: TimeRange,
    bucket: str,
    group_by: str,
    customer_id: str | None = None,
    model_name: str | None = None,
) -> dict[str, list[SeriesPoint]]:
    """Series key (``all``, a customer id or a model name) → its points, oldest first."""
    parameters = {
        **time_range.parameters(), "group": group_by, "bucket_seconds": BUCKET_SECONDS[bucket],
        "customer": customer_id, "model": model_name,
    }  # fmt: skip
    series: dict[str, list[SeriesPoint]] = {}
    for key, start, n, errors, timeouts, billed, cost, gpu in store.rows(SERIES_SQL, parameters):
        point = SeriesPoint(
            datetime.fromtimestamp(int(start), UTC), int(n), int(errors), int(timeouts),
            float(billed), int(cost), float(gpu),
        )  # fmt: skip
        series.setdefault(str(key), []).append(point)
    return series

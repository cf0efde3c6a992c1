"""Read queries over the usage store: billing totals, usage breakdowns, dashboards.

Every query is a constant SQL text; values (range, customer, model, grouping switches) are
bound as server-side parameters, so no caller text ever becomes SQL. Optional filters are
``Nullable`` parameters that fold to true when NULL. Ranges are half-open ``[start, end)``;
the rollups hold whole minutes (or hours), so their ranges select buckets that start inside.
Times come back as epoch seconds: some chDB builds drop the zone of ``DateTime('UTC')``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from render_gateway.metering.store import UsageStore

MAX_SPAN_DAYS = 366
GROUPINGS = frozenset({"model", "day"})
DEFAULT_GROUP_BY = ("model", "day")
_GROUPING_ORDER = ("model", "day")


class QueryError(ValueError):
    """A query's arguments are invalid (the API answers 400 with this message)."""


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_instant(text: str, name: str) -> datetime:
    """An API request's ISO 8601 date or datetime (UTC without an offset); QueryError names
    ``name`` when it is not one."""
    try:
        # A date alone is its midnight; a datetime without an offset is UTC.
        return _utc(datetime.fromisoformat(text.strip()))
    except (ValueError, OverflowError):  # OverflowError: an offset past the calendar's edge
        raise QueryError(
            f"{name}={text!r} is not an ISO 8601 date or datetime"
            " (e.g. 2024-05-01 or 2024-05-01T12:00:00Z)"
        ) from None


@dataclass(frozen=True)
class TimeRange:
    """``[start, end)`` in UTC."""

    start: datetime
    end: datetime

    @classmethod
    def parse(
        cls, from_text: str | None, to_text: str | None, now: datetime, default_days: int = 30
    ) -> TimeRange:
        """The range of an API request's ``from``/``to``: ``to`` defaults to ``now`` and
        ``from`` to ``default_days`` before ``to``."""
        end = parse_instant(to_text, "to") if to_text else _utc(now)
        try:
            start = (
                parse_instant(from_text, "from")
                if from_text
                else end - timedelta(days=default_days)
            )
        except OverflowError:  # a `to` near year 1 leaves no room for the default span
            raise QueryError(f"to={to_text!r} leaves no room for the default range") from None
        if start >= end:
            raise QueryError(f"from ({start.isoformat()}) must be before to ({end.isoformat()})")
        if end - start > timedelta(days=MAX_SPAN_DAYS):
            raise QueryError(f"the range spans more than {MAX_SPAN_DAYS} days; ask in parts")
        return cls(start, end)

    def parameters(self) -> dict[str, Any]:
        """The bounds as the ``{start_us:Int64}``/``{end_us:Int64}`` parameters."""
        return {"start_us": _epoch_us(self.start), "end_us": _epoch_us(self.end)}


def _epoch_us(moment: datetime) -> int:
    delta = _utc(moment) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def parse_group_by(text: str | None) -> tuple[str, ...]:
    """``model``, ``day``, both (the default) or none (``""``: totals), in canonical order."""
    if text is None:
        return DEFAULT_GROUP_BY
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - GROUPINGS)
    if unknown:
        allowed = ", ".join(sorted(GROUPINGS))
        raise QueryError(f"group_by: unknown {', '.join(unknown)} (allowed: {allowed})")
    return tuple(name for name in _GROUPING_ORDER if name in names)


def _rows(
    store: UsageStore, sql: str, time_range: TimeRange, **values: Any
) -> list[tuple[Any, ...]]:
    parameters: Mapping[str, Any] = {**time_range.parameters(), **values}
    return store.rows(sql, parameters)


@dataclass(frozen=True)
class KeyTotals:
    customer_id: str
    model_name: str
    requests: int
    gpu_seconds: float  # every row, billable or not
    billable_requests: int
    billed_gpu_seconds: float
    cost_nanos: int


# Exact, from the raw rows (the reconciliation input). Kahan sums keep the float totals within
# an ulp or two of the exact sum; no result aliases, as ClickHouse aliases shadow columns.
CUSTOMER_MODEL_TOTALS_SQL = """
SELECT customer_id, model_name, count(), sumKahan(gpu_seconds), countIf(billable),
    sumKahanIf(gpu_seconds, billable), sum(cost_nanos)
FROM inference_events
WHERE timestamp >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
    AND timestamp < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')
    AND ({customer:Nullable(String)} IS NULL OR customer_id = {customer:Nullable(String)})
GROUP BY customer_id, model_name
ORDER BY customer_id, model_name
"""


def customer_model_totals(
    store: UsageStore, time_range: TimeRange, customer_id: str | None = None
) -> list[KeyTotals]:
    rows = _rows(store, CUSTOMER_MODEL_TOTALS_SQL, time_range, customer=customer_id)
    return [
        KeyTotals(str(c), str(m), int(n), float(g), int(bn), float(bg), int(cost))
        for c, m, n, g, bn, bg, cost in rows
    ]


@dataclass(frozen=True)
class UsageRow:
    model_name: str | None  # None: not grouped by model
    day: date | None  # None: not grouped by day
    requests: int
    billable_requests: int
    billed_gpu_seconds: float
    cost_nanos: int
    unmetered_requests: int = 0  # the backend measured nothing: the gateway attributed the time
    unmetered_gpu_seconds: float = 0.0  # billed GPU-seconds of those


# One constant query for every grouping: a key that is switched off is a constant, which
# groups everything together.
USAGE_SQL = """
SELECT if({by_model:Bool}, model_name, '') AS model_key,
    if({by_day:Bool}, toDate(minute), toDate(0)) AS day_key,
    sum(requests), sum(billable_requests), sum(billed_gpu_seconds), sum(cost_nanos),
    sum(unmetered_requests), sum(unmetered_gpu_seconds)
FROM metrics_1m
WHERE customer_id = {customer:String}
    AND minute >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
    AND minute < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')
GROUP BY model_key, day_key
ORDER BY model_key, day_key
"""


def usage_breakdown(
    store: UsageStore, customer_id: str, time_range: TimeRange, group_by: tuple[str, ...]
) -> list[UsageRow]:
    """A customer's usage per model and/or UTC day (no rows when they have none)."""
    unknown = set(group_by) - GROUPINGS
    if unknown:
        raise QueryError(f"group_by: unknown {', '.join(sorted(unknown))}")
    by_model, by_day = "model" in group_by, "day" in group_by
    rows = _rows(
        store, USAGE_SQL, time_range, customer=customer_id, by_model=by_model, by_day=by_day
    )
    return [
        UsageRow(
            str(model) if by_model else None,
            day if by_day else None,
            int(n),
            int(bn),
            float(bg),
            int(cost),
            int(un),
            float(ug),
        )
        for model, day, n, bn, bg, cost, un, ug in rows
    ]


def usage_totals(store: UsageStore, customer_id: str, time_range: TimeRange) -> UsageRow:
    rows = usage_breakdown(store, customer_id, time_range, ())
    return rows[0] if rows else UsageRow(None, None, 0, 0, 0.0, 0)


@dataclass(frozen=True)
class MinuteRow:
    minute: datetime
    requests: int
    errors: int
    timeouts: int
    gpu_seconds: float
    mean_latency_ms: float
    max_latency_ms: float


PER_MINUTE_SQL = """
SELECT toUnixTimestamp(minute), sum(requests), sum(errors), sum(timeouts), sum(gpu_seconds),
    sum(latency_us_sum), max(latency_us_max)
FROM metrics_1m
WHERE minute >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
    AND minute < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')
    AND ({customer:Nullable(String)} IS NULL OR customer_id = {customer:Nullable(String)})
    AND ({model:Nullable(String)} IS NULL OR model_name = {model:Nullable(String)})
GROUP BY minute
ORDER BY minute
"""


def per_minute(
    store: UsageStore,
    time_range: TimeRange,
    customer_id: str | None = None,
    model_name: str | None = None,
) -> list[MinuteRow]:
    rows = _rows(store, PER_MINUTE_SQL, time_range, customer=customer_id, model=model_name)
    return [
        MinuteRow(
            _from_epoch(int(minute)),
            int(n),
            int(errors),
            int(timeouts),
            float(gpu),
            int(latency_sum) / int(n) / 1000 if n else 0.0,
            int(latency_max) / 1000,
        )
        for minute, n, errors, timeouts, gpu, latency_sum, latency_max in rows
    ]


@dataclass(frozen=True)
class QuantileRow:
    model_name: str
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    count: int


LATENCY_QUANTILES_SQL = """
SELECT model_name, quantilesTDigestMerge(0.5, 0.9, 0.95, 0.99)(latency_us), sum(requests)
FROM latency_quantiles_1m
WHERE minute >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
    AND minute < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')
    AND ({model:Nullable(String)} IS NULL OR model_name = {model:Nullable(String)})
GROUP BY model_name
ORDER BY model_name
"""


def latency_quantiles(
    store: UsageStore, time_range: TimeRange, model_name: str | None = None
) -> list[QuantileRow]:
    """Approximate (t-digest) end-to-end latency quantiles per model."""
    rows = _rows(store, LATENCY_QUANTILES_SQL, time_range, model=model_name)
    result = []
    for model, quantiles, n in rows:
        p50, p90, p95, p99 = (float(q) / 1000 for q in quantiles)
        result.append(QuantileRow(str(model), p50, p90, p95, p99, int(n)))
    return result


@dataclass(frozen=True)
class OperatorHour:
    hour: datetime
    device_uuid: str  # '' for requests whose backend named no device
    gpu_seconds: float
    requests: int
    unique_customers: int
    mean_batch_size: float
    max_batch_size: int
    errors: int
    timeouts: int
    utilisation: float  # GPU-seconds used over the seconds in the hour


OPERATOR_HOURLY_SQL = """
SELECT toUnixTimestamp(hour), device_uuid, sum(gpu_seconds), sum(requests),
    uniqExactMerge(customers), sum(batch_size_sum), max(batch_size_max), sum(errors),
    sum(timeouts)
FROM operator_metrics_1h
WHERE hour >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
    AND hour < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')
GROUP BY hour, device_uuid
ORDER BY hour, device_uuid
"""


def operator_hourly(store: UsageStore, time_range: TimeRange) -> list[OperatorHour]:
    rows = _rows(store, OPERATOR_HOURLY_SQL, time_range)
    return [
        OperatorHour(
            _from_epoch(int(hour)),
            str(device),
            float(gpu),
            int(n),
            int(customers),
            int(batch_sum) / int(n) if n else 0.0,
            int(batch_max),
            int(errors),
            int(timeouts),
            float(gpu) / 3600,
        )
        for hour, device, gpu, n, customers, batch_sum, batch_max, errors, timeouts in rows
    ]


@dataclass(frozen=True)
class ErrorCount:
    error_code: str | None  # None: a failure that named no code
    model_name: str
    count: int


# From the raw table: no rollup keeps the error code. Failed requests are few, and the range
# prunes the table's day partitions.
ERRORS_BY_CODE_SQL = """
SELECT error_code, model_name, count()
FROM inference_events
WHERE timestamp >= fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')
    AND timestamp < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')
    AND status IN ('error', 'timeout')
    AND ({customer:Nullable(String)} IS NULL OR customer_id = {customer:Nullable(String)})
    AND ({model:Nullable(String)} IS NULL OR model_name = {model:Nullable(String)})
GROUP BY error_code, model_name
ORDER BY count() DESC, model_name, error_code
"""


def errors_by_code(
    store: UsageStore,
    time_range: TimeRange,
    customer_id: str | None = None,
    model_name: str | None = None,
) -> list[ErrorCount]:
    """Failed requests (status error or timeout) per error code and model, most first."""
    rows = _rows(store, ERRORS_BY_CODE_SQL, time_range, customer=customer_id, model=model_name)
    return [
        ErrorCount(None if code is None else str(code), str(model), int(n))
        for code, model, n in rows
    ]

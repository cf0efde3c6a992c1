"""The rollups and queries on a real chDB store, checked against aggregates computed in Python
from the same generated records."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from render_gateway.core.usage_records import build_record
from render_gateway.metering.columns import records_to_table
from render_gateway.metering.queries import (
    QueryError,
    TimeRange,
    customer_model_totals,
    latency_quantiles,
    operator_hourly,
    parse_group_by,
    per_minute,
    usage_breakdown,
    usage_totals,
)
from render_gateway.metering.store import ClickHouseUsageStore, open_usage_store

MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US
# Midnight UTC three days ago: recent, so the 400-day TTL never drops the rows.
BASE_US = (int(time.time()) // 86_400 - 3) * DAY_US
CUSTOMERS = ("acme", "globex", "initech")
MODELS = (("image", "flux", "schnell"), ("image", "sdxl", "base"), ("video", "ltx", "2b"))
DEVICES = ("GPU-0a1b", "GPU-2c3d", "GPU-4e5f", "")  # '': a backend that names no device
QUANTILE_MODEL = ("image", "probe", "latency")
EDGE_CUSTOMER = "edge"
# The range the edge records straddle: [BASE + 1 day, BASE + 2 days).
EDGE_RANGE_US = (BASE_US + DAY_US, BASE_US + 2 * DAY_US)


def usage(
    rng: random.Random,
    end_us: int,
    customer: str,
    family: tuple[str, str, str],
    total_us: int,
) -> dict[str, Any]:
    queue_us = rng.randint(0, total_us // 2)
    outcome = rng.choice(("success",) * 6 + ("error", "cancelled"))
    error_code = rng.choice(("timeout", "backend_error")) if outcome == "error" else None
    parameters: dict[str, Any] = {"device_uuid": rng.choice(DEVICES), "width": 512, "height": 512}
    if rng.random() < 0.8:  # the rest are metered by wall time
        parameters["gpu_seconds"] = round(rng.uniform(0.01, 30.0), 6)
    modality, family_name, model = family
    record = build_record(
        request_id=f"req-{rng.getrandbits(64):x}",
        customer_id=customer,
        plan=rng.choice(("free", "pro")),
        tier=rng.choice(("sync", "async")),
        modality=modality,
        family=family_name,
        model=model,
        created_at=(end_us - total_us) / 1e6,
        started_at=(end_us - total_us + queue_us) / 1e6,
        ended_at=end_us / 1e6,
        outcome=outcome,  # type: ignore[arg-type]
        parameters=parameters,
        unit_price=rng.choice((0.0004, 0.00125)),
        currency="USD",
        backend="pool-a",
        error_code=error_code,
        batch_size=rng.randint(1, 8),
    )
    return record.to_dict()


def generate(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = [
        usage(
            rng,
            BASE_US + rng.randrange(3 * DAY_US),
            rng.choice(CUSTOMERS),
            rng.choice(MODELS),
            rng.randint(50_000, 20_000_000),
        )
        for _ in range(3_000)
    ]
    # One minute-dense hour for the per-minute view.
    records += [
        usage(rng, BASE_US + 5 * HOUR_US + rng.randrange(HOUR_US), "acme", MODELS[0], 900_000)
        for _ in range(600)
    ]
    # Latencies from a lognormal (median 2 s) over ten minutes, for the t-digest check.
    records += [
        usage(
            rng,
            BASE_US + 7 * HOUR_US + rng.randrange(10 * MINUTE_US),
            "globex",
            QUANTILE_MODEL,
            max(1, round(rng.lognormvariate(14.5, 0.6))),
        )
        for _ in range(5_000)
    ]
    # Exactly on and beside the edges of EDGE_RANGE_US: the two inside count, the two outside
    # do not.
    start, end = EDGE_RANGE_US
    for end_us in (start - 1, start, end - 1, end):
        records.append(usage(rng, end_us, EDGE_CUSTOMER, MODELS[0], 100_000))
    return records


def stored_us(record: dict[str, Any]) -> int:
    return round(float(record["timestamp"]) * 1_000_000)


@dataclass(frozen=True)
class Dataset:
    store: ClickHouseUsageStore
    records: list[dict[str, Any]]

    def select(self, start_us: int, end_us: int) -> list[dict[str, Any]]:
        return [r for r in self.records if start_us <= stored_us(r) < end_us]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataset]:
    store = open_usage_store(f"chdb://{tmp_path_factory.mktemp('usage')}/usage.chdb")
    records = generate(seed=20240501)
    random.Random(7).shuffle(records)
    # Several inserts, so the rollups hold several rows per key until parts merge.
    for index, start in enumerate(range(0, len(records), 2_000)):
        batch = records[start : start + 2_000]
        store.insert(records_to_table(batch), dedup_token=f"batch-{index}")
    yield Dataset(store, records)
    store.close()


def whole_range() -> TimeRange:
    return TimeRange(_dt(BASE_US - DAY_US), _dt(BASE_US + 4 * DAY_US))


def _dt(epoch_us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=epoch_us)


def group(
    records: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]
) -> dict[Any, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[key(record)].append(record)
    return dict(groups)


def count(records: list[dict[str, Any]], status: str) -> int:
    return sum(r["status"] == status for r in records)


def billed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["billable"]]


def close(value: float) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-9)


def minute_of(record: dict[str, Any]) -> int:
    return stored_us(record) // MINUTE_US * 60


METRICS_1M_SQL = """
SELECT customer_id, model_name, toUnixTimestamp(minute), sum(requests), sum(success),
    sum(errors), sum(timeouts), sum(cancelled), sum(latency_us_sum), sum(latency_us_sq_sum),
    min(latency_us_min), max(latency_us_max), sum(input_tokens), sum(output_tokens),
    sum(gpu_seconds), sum(billed_gpu_seconds), sum(billable_requests), sum(cost_nanos),
    sum(queue_time_us_sum), max(queue_time_us_max)
FROM metrics_1m GROUP BY customer_id, model_name, minute
"""


@pytest.mark.parametrize("merged", [False, True], ids=["parts", "merged"])
def test_metrics_1m_equals_the_raw_records(data: Dataset, merged: bool) -> None:
    if merged:  # SummingMergeTree must sum counts but keep min/max as min/max
        data.store.rows("OPTIMIZE TABLE metrics_1m FINAL")
    stored = {(row[0], row[1], row[2]): row[3:] for row in data.store.rows(METRICS_1M_SQL)}
    expected = group(data.records, lambda r: (r["customer_id"], r["model_name"], minute_of(r)))
    assert stored.keys() == expected.keys()
    for key, records in expected.items():
        latencies = [r["total_time_us"] for r in records]
        queues = [r["queue_time_us"] for r in records]
        assert stored[key] == (
            len(records),
            count(records, "success"),
            count(records, "error"),
            count(records, "timeout"),
            count(records, "cancelled"),
            sum(latencies),
            close(sum(float(x) * x for x in latencies)),
            min(latencies),
            max(latencies),
            sum(r["input_tokens"] for r in records),
            sum(r["output_tokens"] for r in records),
            close(sum(r["gpu_seconds"] for r in records)),
            close(sum(r["gpu_seconds"] for r in billed(records))),
            len(billed(records)),
            sum(r["cost_nanos"] for r in records),
            sum(queues),
            max(queues),
        ), key


def test_the_generated_records_cover_every_status_device_and_model(data: Dataset) -> None:
    # The comparisons above mean little unless every branch of the rollups is exercised.
    assert {r["status"] for r in data.records} == {"success", "error", "timeout", "cancelled"}
    assert {r["device_uuid"] or "" for r in data.records} == set(DEVICES)
    assert len({r["model_name"] for r in data.records}) == len(MODELS) + 1
    assert {r["metered"] for r in data.records} == {True, False}


def test_operator_hourly_equals_the_raw_records(data: Dataset) -> None:
    hours = operator_hourly(data.store, whole_range())
    expected = group(
        data.records, lambda r: (stored_us(r) // HOUR_US * 3600, r["device_uuid"] or "")
    )
    assert [(int(h.hour.timestamp()), h.device_uuid) for h in hours] == sorted(expected)
    for hour in hours:
        records = expected[(int(hour.hour.timestamp()), hour.device_uuid)]
        gpu_seconds = sum(r["gpu_seconds"] for r in records)
        assert hour.hour.tzinfo == UTC
        assert hour.gpu_seconds == close(gpu_seconds)
        assert hour.requests == len(records)
        assert hour.unique_customers == len({r["customer_id"] for r in records})
        assert hour.mean_batch_size == close(sum(r["batch_size"] for r in records) / len(records))
        assert hour.max_batch_size == max(r["batch_size"] for r in records)
        assert (hour.errors, hour.timeouts) == (count(records, "error"), count(records, "timeout"))
        assert hour.utilisation == close(gpu_seconds / 3600)


def expected_totals(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    groups = group(records, lambda r: (r["customer_id"], r["model_name"]))
    return [
        (
            *key,
            len(rows),
            close(sum(r["gpu_seconds"] for r in rows)),
            len(billed(rows)),
            close(sum(r["gpu_seconds"] for r in billed(rows))),
            sum(r["cost_nanos"] for r in rows),
        )
        for key, rows in sorted(groups.items())
    ]


def as_tuples(rows: list[Any]) -> list[tuple[Any, ...]]:
    return [tuple(vars(row).values()) for row in rows]


def test_customer_model_totals_equal_the_raw_records(data: Dataset) -> None:
    everything = customer_model_totals(data.store, whole_range())
    assert as_tuples(everything) == expected_totals(data.records)
    one_day = TimeRange(_dt(BASE_US + DAY_US), _dt(BASE_US + 2 * DAY_US))
    acme = customer_model_totals(data.store, one_day, customer_id="acme")
    day_records = data.select(BASE_US + DAY_US, BASE_US + 2 * DAY_US)
    assert as_tuples(acme) == expected_totals(
        [r for r in day_records if r["customer_id"] == "acme"]
    )
    assert customer_model_totals(data.store, one_day, customer_id="nobody") == []


def test_ranges_are_half_open_to_the_microsecond_and_the_minute(data: Dataset) -> None:
    edge = TimeRange(_dt(EDGE_RANGE_US[0]), _dt(EDGE_RANGE_US[1]))
    inside = [r for r in data.select(*EDGE_RANGE_US) if r["customer_id"] == EDGE_CUSTOMER]
    assert [stored_us(r) for r in sorted(inside, key=stored_us)] == [
        EDGE_RANGE_US[0],
        EDGE_RANGE_US[1] - 1,
    ]
    [raw] = customer_model_totals(data.store, edge, customer_id=EDGE_CUSTOMER)
    assert raw.requests == 2
    [rolled_up] = usage_breakdown(data.store, EDGE_CUSTOMER, edge, ())
    assert rolled_up.requests == 2
    assert rolled_up.cost_nanos == sum(r["cost_nanos"] for r in inside)
    # Moving the end back by a minute drops the last minute's bucket, record and all.
    shorter = TimeRange(edge.start, edge.end - timedelta(minutes=1))
    assert usage_totals(data.store, EDGE_CUSTOMER, shorter).requests == 1


def usage_key(record: dict[str, Any], group_by: tuple[str, ...]) -> tuple[Any, ...]:
    day = datetime.fromtimestamp(stored_us(record) // 1_000_000, UTC).date()
    return (
        record["model_name"] if "model" in group_by else None,
        day if "day" in group_by else None,
    )


@pytest.mark.parametrize("group_by", [("model", "day"), ("model",), ("day",), ()], ids=str)
def test_usage_breakdown_equals_the_raw_records(data: Dataset, group_by: tuple[str, ...]) -> None:
    time_range = TimeRange(_dt(BASE_US), _dt(BASE_US + 2 * DAY_US))
    selected = data.select(BASE_US, BASE_US + 2 * DAY_US)
    mine = [r for r in selected if r["customer_id"] == "globex"]
    expected = group(mine, lambda r: usage_key(r, group_by))
    rows = usage_breakdown(data.store, "globex", time_range, group_by)
    assert [(row.model_name, row.day) for row in rows] == sorted(
        expected, key=lambda k: (k[0] or "", k[1] or date.min)
    )
    for row in rows:
        records = expected[(row.model_name, row.day)]
        assert (row.requests, row.billable_requests, row.cost_nanos) == (
            len(records),
            len(billed(records)),
            sum(r["cost_nanos"] for r in records),
        )
        assert row.billed_gpu_seconds == close(sum(r["gpu_seconds"] for r in billed(records)))
    totals = usage_totals(data.store, "globex", time_range)
    assert totals.requests == len(mine)
    assert totals.cost_nanos == sum(r["cost_nanos"] for r in mine)


def test_usage_totals_of_a_customer_without_usage_are_zero(data: Dataset) -> None:
    totals = usage_totals(data.store, "nobody", whole_range())
    assert (totals.requests, totals.billable_requests, totals.cost_nanos) == (0, 0, 0)
    assert usage_breakdown(data.store, "nobody", whole_range(), ("model", "day")) == []


@pytest.mark.parametrize(
    ("customer", "model"), [("acme", "image/flux/schnell"), (None, None)], ids=["one", "all"]
)
def test_per_minute_equals_the_raw_records(
    data: Dataset, customer: str | None, model: str | None
) -> None:
    start, end = BASE_US + 5 * HOUR_US, BASE_US + 6 * HOUR_US
    minutes = per_minute(data.store, TimeRange(_dt(start), _dt(end)), customer, model)
    selected = [
        r
        for r in data.select(start, end)
        if customer in (None, r["customer_id"]) and model in (None, r["model_name"])
    ]
    expected = group(selected, minute_of)
    assert [int(m.minute.timestamp()) for m in minutes] == sorted(expected)
    assert len(minutes) == 60
    for minute in minutes:
        records = expected[int(minute.minute.timestamp())]
        latencies = [r["total_time_us"] for r in records]
        assert (minute.requests, minute.errors, minute.timeouts) == (
            len(records),
            count(records, "error"),
            count(records, "timeout"),
        )
        assert minute.gpu_seconds == close(sum(r["gpu_seconds"] for r in records))
        assert minute.mean_latency_ms == close(sum(latencies) / len(latencies) / 1000)
        assert minute.max_latency_ms == max(latencies) / 1000


def test_latency_quantiles_are_close_to_the_exact_ones(data: Dataset) -> None:
    name = "/".join(QUANTILE_MODEL)
    [row] = latency_quantiles(data.store, whole_range(), model_name=name)
    latencies = np.array([r["total_time_us"] for r in data.records if r["model_name"] == name])
    exact = np.percentile(latencies, [50, 90, 95, 99]) / 1000
    assert row.count == len(latencies) == 5_000
    estimates = np.array([row.p50_ms, row.p90_ms, row.p95_ms, row.p99_ms])
    relative = np.abs(estimates - exact) / exact
    # Measured on this data: under 0.1 % at every quantile; 1 % leaves room for another digest.
    assert (relative <= 0.01).all(), relative
    every_model = latency_quantiles(data.store, whole_range())
    assert [q.model_name for q in every_model] == sorted({r["model_name"] for r in data.records})


def test_time_range_parsing() -> None:
    now = datetime(2024, 5, 20, 12, 30, tzinfo=UTC)
    default = TimeRange.parse(None, None, now)
    assert (default.start, default.end) == (now - timedelta(days=30), now)
    days = TimeRange.parse("2024-05-01", "2024-05-02", now)
    assert (days.start, days.end) == (
        datetime(2024, 5, 1, tzinfo=UTC),
        datetime(2024, 5, 2, tzinfo=UTC),
    )
    zulu = TimeRange.parse("2024-05-01T10:00:00Z", "2024-05-01T14:00:00+02:00", now)
    assert (zulu.start, zulu.end) == (
        datetime(2024, 5, 1, 10, tzinfo=UTC),
        datetime(2024, 5, 1, 12, tzinfo=UTC),
    )
    naive = TimeRange.parse("2024-05-01T10:00:00", None, now)
    assert naive.start == datetime(2024, 5, 1, 10, tzinfo=UTC) and naive.end == now
    only_to = TimeRange.parse(None, "2024-05-10", now, default_days=7)
    assert only_to.start == datetime(2024, 5, 3, tzinfo=UTC)
    longest = TimeRange.parse("2023-05-01", "2024-05-01", now)  # 2024 is a leap year
    assert longest.end - longest.start == timedelta(days=366)


@pytest.mark.parametrize(
    ("from_text", "to_text", "message"),
    [
        ("2024-05-02", "2024-05-01", "must be before"),
        ("2024-05-01", "2024-05-01", "must be before"),
        ("2023-04-30", "2024-05-01", "366 days"),
        ("yesterday", None, "from='yesterday' is not an ISO 8601"),
        (None, "2024-13-01", "to='2024-13-01' is not an ISO 8601"),
    ],
)
def test_bad_time_ranges_are_query_errors(
    from_text: str | None, to_text: str | None, message: str
) -> None:
    with pytest.raises(QueryError, match=message):
        TimeRange.parse(from_text, to_text, datetime(2024, 5, 20, tzinfo=UTC))


def test_group_by_parsing() -> None:
    assert parse_group_by(None) == ("model", "day")
    assert parse_group_by("day, model") == ("model", "day")
    assert parse_group_by("day") == ("day",)
    assert parse_group_by("") == ()
    with pytest.raises(QueryError, match=r"unknown hour \(allowed: day, model\)"):
        parse_group_by("model,hour")


def test_usage_breakdown_refuses_an_unknown_grouping(data: Dataset) -> None:
    with pytest.raises(QueryError, match="unknown customer"):
        usage_breakdown(data.store, "acme", whole_range(), ("customer",))


@pytest.mark.parametrize(
    ("from_text", "to_text"),
    [
        ("0001-01-01T00:00:00+01:00", None),  # UTC would be in year 0
        (None, "0001-01-02"),  # the default 30 days before it would be
        ("2024-01-01", "9999-12-31T23:59:59-01:00"),
    ],
)
def test_instants_past_the_calendars_edge_are_query_errors(
    from_text: str | None, to_text: str | None
) -> None:
    """Refused as a 400 naming the bound, never an OverflowError (a 500)."""
    with pytest.raises(QueryError):
        TimeRange.parse(from_text, to_text, datetime(2026, 12, 1, tzinfo=UTC))

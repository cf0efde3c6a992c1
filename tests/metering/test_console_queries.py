"""The console's reads on a real chDB store: a request's and a job's records, a backend's last
device and latest failures, bucketed series that sum to GET /usage's totals, errors by code."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from render_gateway.core.usage_records import build_record
from render_gateway.metering.backend_activity import (
    FAILURES_PER_BACKEND,
    activity_window,
    backend_activity,
)
from render_gateway.metering.columns import records_to_table
from render_gateway.metering.queries import QueryError, TimeRange, errors_by_code, usage_totals
from render_gateway.metering.record_lookup import find_records
from render_gateway.metering.series import default_bucket, parse_bucket, usage_series
from render_gateway.metering.store import ClickHouseUsageStore, open_usage_store

NOW = time.time()


def record(
    seq: int,
    customer: str,
    ended_ago: float,
    outcome: str = "success",
    error_code: str | None = None,
    backend: str = "w1",
    device: str | None = "GPU-a",
    job_id: str | None = None,
    model: str = "tiny",
) -> dict[str, Any]:
    ended = NOW - ended_ago
    parameters: dict[str, Any] = {"gpu_seconds": 0.5 + seq / 1000}
    if device:
        parameters["device_uuid"] = device
    return build_record(
        request_id=f"req_{seq:04d}", customer_id=customer, plan="default", tier="sync",
        modality="image", family="sd", model=model, created_at=ended - 1.0,
        started_at=ended - 0.8, ended_at=ended, outcome=outcome,  # type: ignore[arg-type]
        parameters=parameters, unit_price=0.002, currency="USD", backend=backend,
        error_code=error_code, job_id=job_id,
    ).to_dict()  # fmt: skip


RECORDS = [
    record(1, "ann", 3600, job_id="job_one", device="GPU-old"),
    record(2, "ann", 1800, job_id="job_one"),  # the job's second run (retried)
    record(3, "bob", 600, model="big"),
    record(4, "bob", 300, outcome="error", error_code="backend_error", backend="broken",
           device=None),
    record(5, "ann", 200, outcome="error", error_code="timeout", backend="broken", device=None),
    record(6, "ann", 2 * 86_400, device="GPU-stale"),  # outside the 24-hour activity window
    *(
        record(100 + n, "cid", 100 - n, outcome="error", error_code="backend_error",
               backend="flaky", device=None)
        for n in range(FAILURES_PER_BACKEND + 3)
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseUsageStore]:
    opened = open_usage_store(f"chdb://{tmp_path_factory.mktemp('console')}/usage.chdb")
    opened.insert(records_to_table(RECORDS[:5]), dedup_token="one")
    opened.insert(records_to_table(RECORDS[5:]), dedup_token="two")
    yield opened
    opened.close()


def whole_range() -> TimeRange:
    now = datetime.now(UTC)
    return TimeRange(now - timedelta(days=3), now + timedelta(minutes=1))


def test_records_by_job_and_by_request_only_for_their_customer(
    store: ClickHouseUsageStore,
) -> None:
    runs = find_records(store, job_id="job_one")
    assert [r.request_id for r in runs] == ["req_0001", "req_0002"]
    assert runs[0].timestamp < runs[1].timestamp and runs[0].device_uuid == "GPU-old"
    assert runs[0].total_time_us == 1_000_000 and runs[0].queue_time_us == 200_000
    assert runs[0].billable and runs[0].metered and runs[0].cost_nanos > 0
    assert find_records(store, job_id="job_one", customer_id="ann") == runs
    assert find_records(store, job_id="job_one", customer_id="bob") == []
    (failed,) = find_records(store, request_id="req_0004")
    assert (failed.status, failed.error_code, failed.job_id) == ("error", "backend_error", None)
    assert failed.backend == "broken" and failed.device_uuid is None
    assert find_records(store, request_id="req_9999") == []
    with pytest.raises(ValueError):
        find_records(store, request_id="req_0001", job_id="job_one")


def test_backend_activity_names_the_last_device_and_the_latest_failures(
    store: ClickHouseUsageStore,
) -> None:
    activity = backend_activity(store, activity_window(datetime.now(UTC)))
    assert activity["w1"].device_uuid == "GPU-a" and activity["w1"].recent_failures == []
    broken = activity["broken"]
    assert broken.device_uuid is None
    assert [f.request_id for f in broken.recent_failures] == ["req_0005", "req_0004"]
    assert [f.error_code for f in broken.recent_failures] == ["timeout", "backend_error"]
    flaky = activity["flaky"].recent_failures
    assert len(flaky) == FAILURES_PER_BACKEND  # the newest ten of thirteen
    assert flaky[0].request_id == f"req_{100 + FAILURES_PER_BACKEND + 2:04d}"
    assert all(a.at > b.at for a, b in itertools.pairwise(flaky))


@pytest.mark.parametrize("bucket", ["minute", "hour", "day"])
@pytest.mark.parametrize("group_by", ["none", "customer", "model"])
def test_series_sum_to_the_usage_totals(
    store: ClickHouseUsageStore, bucket: str, group_by: str
) -> None:
    span = whole_range()
    series = usage_series(store, span, bucket, group_by)
    expected_keys = {
        "none": {"all"},
        "customer": {"ann", "bob", "cid"},
        "model": {"image/sd/tiny", "image/sd/big"},
    }
    assert set(series) == expected_keys[group_by]
    for customer in ("ann", "bob"):
        mine = usage_series(store, span, bucket, "none", customer_id=customer)["all"]
        totals = usage_totals(store, customer, span)
        assert sum(p.requests for p in mine) == totals.requests
        assert sum(p.cost_nanos for p in mine) == totals.cost_nanos
        assert sum(p.gpu_seconds for p in mine) == pytest.approx(totals.billed_gpu_seconds)
        assert all(p.t.timestamp() % {"minute": 60, "hour": 3600, "day": 86400}[bucket] == 0
                   for p in mine)  # fmt: skip
    (bob,) = usage_series(store, span, bucket, "none", customer_id="bob").values()
    assert sum(p.errors for p in bob) == 1 and sum(p.timeouts for p in bob) == 0
    (ann_errors,) = usage_series(store, span, bucket, "none", customer_id="ann").values()
    assert sum(p.errors for p in ann_errors) == sum(p.timeouts for p in ann_errors) == 1


def test_buckets_default_by_span_and_refuse_too_many_points() -> None:
    now = datetime.now(UTC)
    assert default_bucket(TimeRange(now - timedelta(hours=6), now)) == "minute"
    assert default_bucket(TimeRange(now - timedelta(hours=7), now)) == "hour"
    assert default_bucket(TimeRange(now - timedelta(days=8), now)) == "day"
    with pytest.raises(QueryError, match="more than"):
        parse_bucket("minute", TimeRange(now - timedelta(days=8), now))
    with pytest.raises(QueryError, match="allowed"):
        parse_bucket("week", TimeRange(now - timedelta(days=8), now))


def test_errors_by_code_per_model_most_first(store: ClickHouseUsageStore) -> None:
    counts = errors_by_code(store, whole_range())
    assert (counts[0].error_code, counts[0].model_name, counts[0].count) == (
        "backend_error", "image/sd/tiny", FAILURES_PER_BACKEND + 3 + 1,
    )  # fmt: skip
    assert [(c.error_code, c.count) for c in counts[1:]] == [("timeout", 1)]
    mine = errors_by_code(store, whole_range(), customer_id="ann")
    assert [(c.error_code, c.count) for c in mine] == [("timeout", 1)]

"""Capacity planning's read of the hot path on a real chDB store, against the same figures
computed in Python from the generated records (edges of the window included)."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from render_gateway.core.usage_records import build_record
from render_gateway.metering.capacity_queries import model_traffic
from render_gateway.metering.columns import records_to_table
from render_gateway.metering.queries import TimeRange
from render_gateway.metering.store import ClickHouseUsageStore, open_usage_store

# A whole-minute window two days ago (far inside the TTL), ten minutes and a half long.
START = (int(time.time()) // 60 - 2 * 24 * 60) * 60.0
END = START + 630.0


def record(rng: random.Random, model: str, created: float, queue: float, service: float) -> Any:
    return build_record(
        request_id=f"req-{rng.getrandbits(64):x}", customer_id="acme", plan="free",
        tier="async", modality="image", family="sd", model=model, created_at=created,
        started_at=created + queue, ended_at=created + queue + service,
        outcome="success", parameters={"gpu_seconds": service}, unit_price=0.001,
        currency="USD", backend="w1",
    ).to_dict()  # fmt: skip


def generate() -> list[dict[str, Any]]:
    rng = random.Random(42)
    records = []
    for model, rate in (("tiny", 0.5), ("big", 0.1)):
        t = START - 20.0  # some arrive before the window and end inside it
        while t < END + 5:
            records.append(record(rng, model, t, rng.uniform(0, 3), rng.expovariate(1.0)))
            t += rng.expovariate(rate)
    return records


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClickHouseUsageStore, Any]]:
    opened = open_usage_store(f"chdb://{tmp_path_factory.mktemp('capacity')}/usage.chdb")
    records = generate()
    opened.insert(records_to_table(records), dedup_token="capacity")
    yield opened, records
    opened.close()


def window() -> TimeRange:
    return TimeRange(datetime.fromtimestamp(START, UTC), datetime.fromtimestamp(END, UTC))


def test_traffic_matches_the_records(store: tuple[ClickHouseUsageStore, Any]) -> None:
    usage, records = store
    found = {t.model_name: t for t in model_traffic(usage, window())}
    assert set(found) == {"image/sd/tiny", "image/sd/big"}
    for name, traffic in found.items():
        inside = [
            r for r in records
            if r["model_name"] == name and START <= round(r["timestamp"] * 1e6) / 1e6 < END
        ]  # fmt: skip
        services = [r["inference_time_us"] / 1e6 for r in inside]
        assert traffic.requests == len(inside)
        assert traffic.service_mean_s == pytest.approx(statistics.fmean(services), rel=1e-9)
        assert traffic.service_variance_s2 == pytest.approx(statistics.variance(services), rel=1e-6)
        waits = [r["queue_time_us"] / 1e6 for r in inside]
        assert traffic.mean_wait_s == pytest.approx(statistics.fmean(waits), rel=1e-9)
        queued = 0.0
        for r in inside:
            end_s = round(r["timestamp"] * 1e6)
            began = max(end_s - r["total_time_us"], START * 1e6)
            queued += max(0.0, end_s - r["inference_time_us"] - began) / 1e6
        assert traffic.queue_length == pytest.approx(queued / (END - START), rel=1e-9)
        # Ten whole minutes; arrivals before the window or in its last half minute are not in.
        assert len(traffic.minute_counts) == 10
        arrivals = [round(r["timestamp"] * 1e6) - r["total_time_us"] - START * 1e6 for r in inside]
        expected = [sum(0 <= a // 60e6 == m for a in arrivals) for m in range(10)]
        assert list(traffic.minute_counts) == expected


def test_one_model_and_an_empty_window(store: tuple[ClickHouseUsageStore, Any]) -> None:
    usage, _ = store
    (only,) = model_traffic(usage, window(), "image/sd/big")
    assert only.model_name == "image/sd/big"
    earlier = TimeRange(
        datetime.fromtimestamp(START - 7200, UTC), datetime.fromtimestamp(START - 3600, UTC)
    )
    assert model_traffic(usage, earlier) == []

"""Usage records: status, billing and cost rules; the Arrow batch they become."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from render_gateway.core.pricing import PlanPrices, PriceTable
from render_gateway.core.usage_records import UsageRecord, build_record, cost_nanos
from render_gateway.metering.columns import ARROW_SCHEMA, records_to_table


def record(**overrides: Any) -> UsageRecord:
    values: dict[str, Any] = dict(
        request_id="r1", customer_id="c1", plan="default", tier="async", modality="image",
        family="sd", model="tiny", created_at=100.0, started_at=101.0, ended_at=103.5,
        outcome="success", unit_price=0.002, currency="USD", job_id="j_1", backend="b1",
        parameters={"gpu_seconds": 2.25, "device_uuid": "GPU-1", "device_kind": "cuda",
                    "steps_completed": 8, "width": 64, "height": 48, "usage_claim": "claim"},
    )  # fmt: skip
    values.update(overrides)
    return build_record(**values)


def test_a_successful_run_is_billed_for_its_reported_gpu_seconds() -> None:
    usage = record()
    assert usage.status == "success" and usage.billable and usage.metered
    assert usage.gpu_seconds == 2.25
    assert usage.cost_nanos == 4_500_000  # 2.25 s × 0.002 per s = 0.0045
    assert (usage.queue_time_us, usage.inference_time_us, usage.total_time_us) == (
        1_000_000, 2_500_000, 3_500_000,
    )  # fmt: skip
    assert usage.input_dims == (64, 48) and usage.num_steps == 8
    assert usage.model_name == "image/sd/tiny" and usage.model_type == "other"


@pytest.mark.parametrize(
    ("outcome", "code", "status", "billed"),
    [
        ("error", "backend_error", "error", False),
        ("error", "timeout", "timeout", False),
        ("cancelled", None, "cancelled", True),  # cancelled after it started: GPU time was spent
    ],
)
def test_statuses_and_what_is_billable(
    outcome: str, code: str | None, status: str, billed: bool
) -> None:
    usage = record(outcome=outcome, error_code=code)
    assert usage.status == status
    assert usage.billable is billed
    assert (usage.cost_nanos > 0) is billed


def test_an_unmetered_backend_is_billed_by_wall_time_and_an_unmetered_error_is_free() -> None:
    wall = record(parameters={})
    assert not wall.metered and wall.gpu_seconds == 2.5
    failed = record(parameters={}, outcome="error", error_code="backend_error")
    assert failed.gpu_seconds == 0.0 and failed.cost_nanos == 0


def test_cost_rounds_once_per_record() -> None:
    assert cost_nanos(1.0, 0.0000000015) == 2  # 1.5 nanos → 2
    assert cost_nanos(0.0, 5.0) == 0


def test_family_prices_override_the_plan_and_unknown_plans_pay_default() -> None:
    prices = PriceTable(
        {"default": PlanPrices(0.001, {}), "pro": PlanPrices(0.0005, {"flux": 0.003})}
    )
    assert prices.unit_price("pro", "flux") == 0.003
    assert prices.unit_price("pro", "sd") == 0.0005
    assert prices.unit_price("gone", "flux") == 0.001


def test_round_trip_through_a_dict() -> None:
    usage = record()
    assert UsageRecord.from_dict(usage.to_dict()) == usage


def test_records_become_one_arrow_batch_in_the_table_order() -> None:
    rows = [record(request_id=f"r{i}").to_dict() for i in range(3)]
    rows[1]["device_uuid"] = None
    table = records_to_table(rows)
    assert table.schema == ARROW_SCHEMA and table.num_rows == 3
    assert table.column("device_uuid").to_pylist() == ["GPU-1", "", "GPU-1"]
    assert table.column("timestamp").to_pylist()[0].timestamp() == 103.5
    assert table.column("model_type").to_pylist() == ["other"] * 3


def test_the_bulk_json_path_builds_the_same_table() -> None:
    import orjson

    from render_gateway.metering.columns import records_json_to_table

    rows = []
    for index, (family, outcome, code) in enumerate(
        [("sd", "success", None), ("FLUX", "error", "timeout"), ("sd3", "cancelled", None)]
    ):
        usage = record(family=family, outcome=outcome, error_code=code, request_id=f"r{index}")
        rows.append(usage.to_dict())
    rows[2]["device_uuid"] = rows[2]["job_id"] = rows[2]["backend"] = None
    rows[1]["input_dims"] = []
    blobs = [orjson.dumps({k: v for k, v in r.items() if k != "usage_claim"}) for r in rows]
    bulk = records_json_to_table(blobs)
    assert bulk.equals(records_to_table(rows))
    assert bulk.column("model_type").to_pylist() == ["other", "rectified_flow", "rectified_flow"]
    assert bulk.column("error_code").to_pylist() == [None, "timeout", None]


# timestamp and family: a record without them was stored with a 1970 timestamp (its row then
# dropped by the TTL) instead of being refused.
@pytest.mark.parametrize("field", ["customer_id", "timestamp", "family"])
def test_the_bulk_json_path_refuses_a_record_missing_a_required_field(field: str) -> None:
    import orjson
    import pyarrow as pa

    from render_gateway.metering.columns import records_json_to_table

    broken = record().to_dict()
    del broken[field]
    with pytest.raises(pa.ArrowInvalid, match=field):
        records_json_to_table([orjson.dumps(broken)])


GARBAGE_SECONDS = [float("nan"), float("inf"), float("-inf"), -3.0, 1e300, True, "2.0", [1.0]]


@pytest.mark.parametrize("reported", GARBAGE_SECONDS)
def test_a_garbage_gpu_seconds_is_no_reading_and_bills_the_wall_time(reported: object) -> None:
    usage = record(parameters={"gpu_seconds": reported})
    assert not usage.metered
    assert usage.gpu_seconds == 2.5 and usage.cost_nanos == 5_000_000  # 2.5 s of wall time
    records_to_table([usage.to_dict()])  # storable


@pytest.mark.parametrize("attributed", [float("nan"), float("inf"), -1.0, 1e300])
def test_a_garbage_attributed_seconds_never_bills_a_nan_a_negative_or_more_than_the_wall(
    attributed: float,
) -> None:
    usage = record(parameters={}, attributed_seconds=attributed)
    assert usage.gpu_seconds == 2.5 and usage.cost_nanos == 5_000_000
    assert record(parameters={}, attributed_seconds=attributed, outcome="error").cost_nanos == 0


def test_attributed_seconds_are_capped_at_the_runs_wall_time() -> None:
    assert record(parameters={}, attributed_seconds=99.0).gpu_seconds == 2.5
    assert record(parameters={}, attributed_seconds=0.75).gpu_seconds == 0.75


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, 2**40, "8", 1e30])
def test_counts_a_backend_cannot_mean_are_left_out_and_the_record_stays_storable(
    value: object,
) -> None:
    usage = record(parameters={"gpu_seconds": 1.0, "steps": value, "width": value, "height": 8})
    assert usage.num_steps == 0 and usage.input_dims == (0, 8)
    records_to_table([usage.to_dict()])


backend_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and both infinities included
    st.text(max_size=6),
)


@settings(max_examples=300, deadline=None)
@given(
    parameters=st.dictionaries(
        st.sampled_from(
            ["gpu_seconds", "steps", "steps_completed", "width", "height", "num_frames"]
        ),
        backend_values,
    ),
    attributed=st.one_of(st.none(), st.floats()),
    outcome=st.sampled_from(["success", "error", "cancelled"]),
)
def test_whatever_a_backend_reports_the_record_is_a_storable_non_negative_bill(
    parameters: dict[str, Any], attributed: float | None, outcome: str
) -> None:
    usage = record(parameters=parameters, attributed_seconds=attributed, outcome=outcome)
    assert math.isfinite(usage.gpu_seconds) and usage.gpu_seconds >= 0
    assert usage.cost_nanos >= 0
    if not usage.metered:
        assert usage.gpu_seconds <= 2.5  # the run's wall time
    records_to_table([usage.to_dict()])
    orjson.dumps(usage.to_dict())

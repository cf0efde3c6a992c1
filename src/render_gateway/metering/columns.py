"""Usage records as an Arrow table: the columnar batch the hot path inserts in one call.

Built column by column from the records' dicts (the form they are persisted in); ClickHouse
converts strings to its UUID and Enum8 columns on insert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from render_gateway.metering.records import model_type

# Column → Arrow type, in the order of the inference_events table.
ARROW_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("customer_id", pa.string()),
        ("model_name", pa.string()),
        ("model_type", pa.string()),
        ("request_id", pa.string()),
        ("input_tokens", pa.uint32()),
        ("output_tokens", pa.uint32()),
        ("input_dims", pa.list_(pa.uint32())),
        ("num_steps", pa.uint32()),
        ("queue_time_us", pa.uint64()),
        ("inference_time_us", pa.uint64()),
        ("total_time_us", pa.uint64()),
        ("gpu_seconds", pa.float64()),
        ("device_uuid", pa.string()),
        ("batch_size", pa.uint32()),
        ("status", pa.string()),
        ("error_code", pa.string()),
        ("plan", pa.string()),
        ("tier", pa.string()),
        ("job_id", pa.string()),
        ("backend", pa.string()),
        ("device_kind", pa.string()),
        ("metered", pa.bool_()),
        ("billable", pa.bool_()),
        ("unit_price", pa.float64()),
        ("currency", pa.string()),
        ("cost_nanos", pa.int64()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(ARROW_SCHEMA.names)
# Optional in the record; stored as '' (ClickHouse's LowCardinality columns are not Nullable).
_EMPTY_IF_NONE = frozenset({"device_uuid", "job_id", "backend", "device_kind"})


def records_to_table(records: Sequence[Mapping[str, Any]]) -> pa.Table:
    """One Arrow table of ``records`` (dicts as ``UsageRecord.to_dict`` writes them)."""
    arrays = []
    for field in ARROW_SCHEMA:
        name = field.name
        if name == "timestamp":
            values: list[Any] = [round(r["timestamp"] * 1_000_000) for r in records]
        elif name == "model_type":
            values = [model_type(r["family"]) for r in records]
        elif name in _EMPTY_IF_NONE:
            values = [r.get(name) or "" for r in records]
        else:
            default = _DEFAULTS.get(name)
            values = [r.get(name, default) for r in records]
        arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


_DEFAULTS: dict[str, Any] = {
    "input_tokens": 0,
    "output_tokens": 0,
    "input_dims": [],
    "num_steps": 0,
    "batch_size": 1,
    "error_code": None,
}

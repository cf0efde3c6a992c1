"""Usage records as an Arrow table: the columnar batch the hot path inserts in one call.

Two builders with the same result: ``records_json_to_table`` parses the persisted JSON of a
whole batch in Arrow's C++ JSON reader (the writer's path: no Python object per field), and
``records_to_table`` builds columns from dicts (the fallback that can skip one bad record).
ClickHouse converts strings to its UUID and Enum8 columns on insert.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from render_gateway.core.usage_records import RECTIFIED_FLOW_FAMILIES, model_type

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


# The stored JSON as Arrow reads it: the table's columns that are stored as they are, plus the
# fields the derived columns come from. Everything else (the signed claim, extras) is skipped
# by the parser without being materialised.
_DERIVED = frozenset({"timestamp", "model_type"})
_JSON_SCHEMA = pa.schema(
    [f for f in ARROW_SCHEMA if f.name not in _DERIVED]
    + [pa.field("timestamp", pa.float64()), pa.field("family", pa.string())]
)
_JSON_OPTIONS = pa_json.ParseOptions(
    explicit_schema=_JSON_SCHEMA, unexpected_field_behavior="ignore"
)
_RECTIFIED_FLOW = pa.array(sorted(RECTIFIED_FLOW_FAMILIES))


def records_json_to_table(blobs: Sequence[bytes]) -> pa.Table:
    """One Arrow table from records' JSON (one object per blob, as the usage log stores them).
    Raises pa.ArrowInvalid on a malformed record (the caller falls back to ``records_to_table``)."""
    parsed = pa_json.read_json(
        io.BytesIO(b"\n".join(blobs)),
        read_options=pa_json.ReadOptions(
            use_threads=False, block_size=max(1 << 20, 2 * sum(map(len, blobs)))
        ),
        parse_options=_JSON_OPTIONS,
    )
    for source in ("timestamp", "family"):  # the derived columns' sources are required too
        if parsed.column(source).null_count:
            raise pa.ArrowInvalid(f"usage record without {source}")
    micros = pc.cast(pc.round(pc.multiply(parsed.column("timestamp"), 1_000_000.0)), pa.int64())
    family = pc.utf8_lower(parsed.column("family"))
    derived = {
        "timestamp": pc.cast(micros, pa.timestamp("us", tz="UTC")),
        "model_type": pc.if_else(
            pc.is_in(family, value_set=_RECTIFIED_FLOW), "rectified_flow", "other"
        ),
    }
    arrays = []
    for field in ARROW_SCHEMA:
        if field.name in derived:
            column = derived[field.name]
        else:
            column = parsed.column(field.name)
            if field.name in _EMPTY_IF_NONE:
                column = pc.fill_null(column, "")
            elif field.name in _DEFAULTS and _DEFAULTS[field.name] is not None:
                column = pc.fill_null(column, pa.scalar(_DEFAULTS[field.name], field.type))
            elif field.name != "error_code" and column.null_count:
                raise pa.ArrowInvalid(f"usage record without {field.name}")
        arrays.append(column.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


# The same conversion done by ClickHouse itself (the writer's normal path): the batch's stored
# JSON goes to the store as it is, one object per line, and ``INSERT ... SELECT`` parses it with
# ``JSONEachRow`` into the structure below and derives the table's columns with
# ``JSON_SELECT``. Python then neither parses nor builds columns (Arrow's JSON reader was the
# largest cost of the hot path). Every field is read as Nullable, so that a missing required
# field fails the insert (``JSON_REQUIRED``) as the Arrow path refuses it, instead of being
# stored as ClickHouse's default; the writer then converts that batch in Python, which skips
# the malformed record alone. Floats are parsed exactly (``precise_float_parsing``), so the
# rounding of ``timestamp`` to microseconds gives the value ``records_json_to_table`` does
# (a test compares the two stores row by row).
_CLICKHOUSE_TYPES = {
    pa.string(): "String",
    pa.uint32(): "UInt32",
    pa.uint64(): "UInt64",
    pa.int64(): "Int64",
    pa.float64(): "Float64",
    pa.bool_(): "Bool",
    pa.list_(pa.uint32()): "Array(UInt32)",
}


def _input_type(field: pa.Field) -> str:
    base = _CLICKHOUSE_TYPES[field.type]
    return base if base.startswith("Array") else f"Nullable({base})"  # arrays cannot be Nullable


JSON_STRUCTURE = ", ".join(f"{f.name} {_input_type(f)}" for f in _JSON_SCHEMA)
_FAMILIES = ", ".join(f"'{family}'" for family in sorted(RECTIFIED_FLOW_FAMILIES))


def _select_expression(name: str) -> str:
    if name == "timestamp":
        return "fromUnixTimestamp64Micro(toInt64(round(timestamp * 1000000)), 'UTC')"
    if name == "model_type":
        return f"if(lowerUTF8(family) IN ({_FAMILIES}), 'rectified_flow', 'other')"
    if name in _EMPTY_IF_NONE:
        return f"ifNull({name}, '')"
    if name in ("error_code", "input_dims"):  # Nullable in the table; [] when missing
        return name
    default = _DEFAULTS.get(name)
    if default is not None:
        return f"ifNull({name}, {default})"
    return f"assumeNotNull({name})"  # JSON_REQUIRED has refused a null


JSON_SELECT = ", ".join(_select_expression(name) for name in COLUMNS)
_REQUIRED = [
    f.name
    for f in _JSON_SCHEMA
    if f.name not in _EMPTY_IF_NONE
    and f.name not in ("error_code", "input_dims")
    and _DEFAULTS.get(f.name) is None
]
JSON_REQUIRED = (
    "throwIf("
    + " OR ".join(f"isNull({name})" for name in _REQUIRED)
    + ", 'a usage record lacks a required field') = 0"
)
# Settings of the JSON insert: unknown fields (the record's extras) are skipped, floats parsed
# exactly, and one thread: a batch is one block and one part, as an Arrow insert makes.
JSON_INSERT_SETTINGS: dict[str, int] = {
    "input_format_skip_unknown_fields": 1,
    "precise_float_parsing": 1,
    "max_threads": 1,
}

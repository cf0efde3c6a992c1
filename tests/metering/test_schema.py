"""The migrations on a real chDB directory: what they create, that they run once, retention."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from render_gateway.core.usage_records import build_record
from render_gateway.metering.columns import COLUMNS, records_to_table
from render_gateway.metering.schema import (
    MIGRATIONS,
    TTL_COLUMNS,
    apply_migrations,
    ensure_retention,
    ttl_days,
)
from render_gateway.metering.store import ClickHouseUsageStore, open_usage_store

# inference_events as ClickHouse reports it: the columns of ARROW_SCHEMA, in its order.
EVENT_COLUMNS = {
    "event_id": "UUID",
    "timestamp": "DateTime64(6, 'UTC')",
    "customer_id": "LowCardinality(String)",
    "model_name": "LowCardinality(String)",
    "model_type": "Enum8('llm' = 1, 'rectified_flow' = 2, 'other' = 3)",
    "request_id": "String",
    "input_tokens": "UInt32",
    "output_tokens": "UInt32",
    "input_dims": "Array(UInt32)",
    "num_steps": "UInt32",
    "queue_time_us": "UInt64",
    "inference_time_us": "UInt64",
    "total_time_us": "UInt64",
    "gpu_seconds": "Float64",
    "device_uuid": "LowCardinality(String)",
    "batch_size": "UInt32",
    "status": "Enum8('success' = 1, 'error' = 2, 'timeout' = 3, 'cancelled' = 4)",
    "error_code": "Nullable(String)",
    "plan": "LowCardinality(String)",
    "tier": "Enum8('sync' = 1, 'async' = 2)",
    "job_id": "String",
    "backend": "LowCardinality(String)",
    "device_kind": "LowCardinality(String)",
    "metered": "Bool",
    "billable": "Bool",
    "unit_price": "Float64",
    "currency": "LowCardinality(String)",
    "cost_nanos": "Int64",
}
TABLES = {
    "schema_migrations": "MergeTree",
    "inference_events": "MergeTree",
    "metrics_1m": "SummingMergeTree",
    "metrics_1m_mv": "MaterializedView",
    "operator_metrics_1h": "AggregatingMergeTree",
    "operator_metrics_1h_mv": "MaterializedView",
    "latency_quantiles_1m": "AggregatingMergeTree",
    "latency_quantiles_1m_mv": "MaterializedView",
    "reconciliation_runs": "MergeTree",
}


def url_of(directory: Path) -> str:
    return f"chdb://{directory}/usage.chdb"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ClickHouseUsageStore]:
    opened = open_usage_store(url_of(tmp_path))
    yield opened
    opened.close()


def test_migrations_create_every_table_and_view(store: ClickHouseUsageStore) -> None:
    rows = store.rows("SELECT name, engine FROM system.tables WHERE database = currentDatabase()")
    assert dict(rows) == TABLES
    recorded = store.rows("SELECT version, name FROM schema_migrations ORDER BY version")
    assert recorded == [(m.version, m.name) for m in MIGRATIONS]
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_materialized_views_write_into_their_target_tables(store: ClickHouseUsageStore) -> None:
    rows = store.rows(
        "SELECT name, arrayJoin(dependencies_table) FROM system.tables"
        " WHERE database = currentDatabase() AND name = 'inference_events'"
    )
    assert sorted(view for _, view in rows) == [
        "latency_quantiles_1m_mv",
        "metrics_1m_mv",
        "operator_metrics_1h_mv",
    ]
    for view in ("metrics_1m", "operator_metrics_1h", "latency_quantiles_1m"):
        [(query,)] = store.rows(
            "SELECT create_table_query FROM system.tables WHERE name = {v:String}",
            {"v": f"{view}_mv"},
        )
        assert f" TO default.{view} " in query


def test_migrations_apply_once(store: ClickHouseUsageStore) -> None:
    assert store.migrate() == []
    assert store.rows("SELECT count() FROM schema_migrations") == [(len(MIGRATIONS),)]


def test_event_columns_are_those_of_the_arrow_batches(store: ClickHouseUsageStore) -> None:
    rows = store.rows(
        "SELECT name, type FROM system.columns"
        " WHERE database = currentDatabase() AND table = 'inference_events' ORDER BY position"
    )
    assert [name for name, _ in rows] == list(COLUMNS)
    assert dict(rows) == EVENT_COLUMNS


def test_the_events_table_is_partitioned_by_day_and_sorted_for_customer_reads(
    store: ClickHouseUsageStore,
) -> None:
    [(partition_key, sorting_key)] = store.rows(
        "SELECT partition_key, sorting_key FROM system.tables"
        " WHERE database = currentDatabase() AND name = 'inference_events'"
    )
    assert (partition_key, sorting_key) == (
        "toDate(timestamp)",
        "customer_id, model_name, timestamp",
    )


def test_a_reopened_directory_keeps_its_data_and_schema(tmp_path: Path) -> None:
    ended_at = time.time() - 60
    record = build_record(
        request_id="req-1",
        customer_id="acme",
        plan="pro",
        tier="async",
        modality="video",
        family="ltx",
        model="2b",
        created_at=ended_at - 3,
        started_at=ended_at - 2,
        ended_at=ended_at,
        outcome="error",
        error_code="timeout",
        parameters={"gpu_seconds": 2.0, "num_frames": 9, "width": 64, "height": 48},
        unit_price=0.001,
        currency="EUR",
        job_id="job-1",
    )
    first = open_usage_store(url_of(tmp_path))
    first.insert(records_to_table([record.to_dict()]))
    first.close()
    again = open_usage_store(url_of(tmp_path))
    try:
        assert again.migrate() == []
        rows = again.rows(
            "SELECT toString(event_id), status, input_dims, error_code, tier, billable, cost_nanos"
            " FROM inference_events"
        )
        assert rows == [(record.event_id, "timeout", [9, 64, 48], "timeout", "async", False, 0)]
        assert again.rows("SELECT sum(timeouts) FROM metrics_1m") == [(1,)]
    finally:
        again.close()


def test_retention_is_set_on_open_and_changed_only_when_it_differs(tmp_path: Path) -> None:
    open_usage_store(url_of(tmp_path), retention_days=400).close()
    with open_client(tmp_path) as client:
        assert {table: ttl_days(client, table) for table in TTL_COLUMNS} == dict.fromkeys(
            TTL_COLUMNS, 400
        )
    open_usage_store(url_of(tmp_path), retention_days=30).close()
    with open_client(tmp_path) as client:
        assert {table: ttl_days(client, table) for table in TTL_COLUMNS} == dict.fromkeys(
            TTL_COLUMNS, 30
        )
        assert ensure_retention(client, 30) == []
        assert ensure_retention(client, 90) == list(TTL_COLUMNS)
        assert apply_migrations(client, 90) == []
        with pytest.raises(ValueError, match="at least 1"):
            ensure_retention(client, 0)


@contextmanager
def open_client(directory: Path) -> Iterator[Client]:
    """A plain clickhouse-connect client on the store's directory (same process: allowed)."""
    client = clickhouse_connect.get_client(interface="chdb", path=str(directory / "usage.chdb"))
    try:
        yield client
    finally:
        client.close()


def _unmetered_record(request_id: str, ended_at: float) -> dict[str, object]:
    record = build_record(
        request_id=request_id, customer_id="acme", plan="pro", tier="sync", modality="image",
        family="tri", model="plain", created_at=ended_at - 1, started_at=ended_at - 1,
        ended_at=ended_at, outcome="success", parameters={}, unit_price=0.001, currency="EUR",
        attributed_seconds=0.25,
    )  # fmt: skip
    assert not record.metered
    return record.to_dict()


def test_a_directory_from_before_migration_6_upgrades_and_counts_unmetered_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 6 (issue 13) on a directory written by the previous release: the rollup gains
    the unmetered columns, old rows keep their totals, new rows are counted apart."""
    from render_gateway.metering import schema
    from render_gateway.metering.queries import TimeRange, usage_totals

    ended_at = time.time() - 60
    with monkeypatch.context() as patched:
        patched.setattr(schema, "MIGRATIONS", MIGRATIONS[:5])
        old = open_usage_store(url_of(tmp_path))
        old.insert(records_to_table([_unmetered_record("req-old", ended_at)]))
        old.close()
    upgraded = open_usage_store(url_of(tmp_path))
    try:
        assert upgraded.rows("SELECT max(version) FROM schema_migrations") == [(6,)]
        upgraded.insert(records_to_table([_unmetered_record("req-new", ended_at)]))
        window = TimeRange.parse(None, None, datetime.now(UTC))
        totals = usage_totals(upgraded, "acme", window)
        assert totals.requests == 2 and totals.billable_requests == 2
        assert totals.unmetered_requests == 1  # the row inserted after the upgrade
        assert totals.unmetered_gpu_seconds == pytest.approx(0.25)
    finally:
        upgraded.close()

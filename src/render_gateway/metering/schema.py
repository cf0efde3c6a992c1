"""The ClickHouse schema of the metering hot path, as versioned migrations applied on start.

``inference_events`` holds one row per usage record (the columns of ``columns.ARROW_SCHEMA``);
three materialized views roll each inserted block up into target tables that the queries read:
``metrics_1m`` (per customer, model and minute), ``operator_metrics_1h`` (per device and hour)
and ``latency_quantiles_1m`` (t-digest states per model and minute).

Every table keeps a deduplication window: a retried insert that repeats its
``insert_deduplication_token`` is dropped by the raw table, and (with
``deduplicate_blocks_in_dependent_materialized_views``) by each rollup, which dedups on a token
derived from the source block's. A rollup without its own window would count the retry twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

EVENTS_TABLE = "inference_events"
# Retried inserts whose token is among the last N blocks of a table are dropped.
DEDUP_WINDOW = 10_000
# Table → the time expression its TTL is computed from (every table ages out together).
TTL_COLUMNS: dict[str, str] = {
    EVENTS_TABLE: "toDateTime(timestamp)",
    "metrics_1m": "minute",
    "operator_metrics_1h": "hour",
    "latency_quantiles_1m": "minute",
}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    # May contain ``{retention_days}`` and ``{dedup_window}``, filled in when applied.
    statements: tuple[str, ...]


_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime64(6, 'UTC')
) ENGINE = MergeTree ORDER BY version
"""

_CREATE_EVENTS = """
CREATE TABLE IF NOT EXISTS inference_events (
    event_id UUID,
    timestamp DateTime64(6, 'UTC'),
    customer_id LowCardinality(String),
    model_name LowCardinality(String),
    model_type Enum8('llm' = 1, 'rectified_flow' = 2, 'other' = 3),
    request_id String,
    input_tokens UInt32,
    output_tokens UInt32,
    input_dims Array(UInt32),
    num_steps UInt32,
    queue_time_us UInt64,
    inference_time_us UInt64,
    total_time_us UInt64,
    gpu_seconds Float64,
    device_uuid LowCardinality(String),
    batch_size UInt32,
    status Enum8('success' = 1, 'error' = 2, 'timeout' = 3, 'cancelled' = 4),
    error_code Nullable(String),
    plan LowCardinality(String),
    tier Enum8('sync' = 1, 'async' = 2),
    job_id String,
    backend LowCardinality(String),
    device_kind LowCardinality(String),
    metered Bool,
    billable Bool,
    unit_price Float64,
    currency LowCardinality(String),
    cost_nanos Int64
) ENGINE = MergeTree
PARTITION BY toDate(timestamp)
ORDER BY (customer_id, model_name, timestamp)
TTL toDateTime(timestamp) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = {dedup_window}
"""

# SummingMergeTree sums every plain numeric column and applies the SimpleAggregateFunction of
# the others when parts merge; until then a key can have several rows, so readers sum().
_CREATE_METRICS_1M = """
CREATE TABLE IF NOT EXISTS metrics_1m (
    customer_id LowCardinality(String),
    model_name LowCardinality(String),
    minute DateTime('UTC'),
    requests UInt64,
    success UInt64,
    errors UInt64,
    timeouts UInt64,
    cancelled UInt64,
    latency_us_sum UInt64,
    latency_us_sq_sum Float64,
    latency_us_min SimpleAggregateFunction(min, UInt64),
    latency_us_max SimpleAggregateFunction(max, UInt64),
    input_tokens UInt64,
    output_tokens UInt64,
    gpu_seconds Float64,
    billed_gpu_seconds Float64,
    billable_requests UInt64,
    cost_nanos Int64,
    queue_time_us_sum UInt64,
    queue_time_us_max SimpleAggregateFunction(max, UInt64)
) ENGINE = SummingMergeTree
ORDER BY (customer_id, model_name, minute)
TTL minute + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = {dedup_window}
"""

_CREATE_METRICS_1M_VIEW = """
CREATE MATERIALIZED VIEW IF NOT EXISTS metrics_1m_mv TO metrics_1m AS
-- Aliases shadow columns in ClickHouse: ``events.gpu_seconds`` is the column, not the sum.
SELECT
    customer_id,
    model_name,
    toStartOfMinute(timestamp) AS minute,
    count() AS requests,
    countIf(status = 'success') AS success,
    countIf(status = 'error') AS errors,
    countIf(status = 'timeout') AS timeouts,
    countIf(status = 'cancelled') AS cancelled,
    sum(total_time_us) AS latency_us_sum,
    sum(toFloat64(total_time_us) * toFloat64(total_time_us)) AS latency_us_sq_sum,
    min(total_time_us) AS latency_us_min,
    max(total_time_us) AS latency_us_max,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(gpu_seconds) AS gpu_seconds,
    sumIf(events.gpu_seconds, billable) AS billed_gpu_seconds,
    countIf(billable) AS billable_requests,
    sum(cost_nanos) AS cost_nanos,
    sum(queue_time_us) AS queue_time_us_sum,
    max(queue_time_us) AS queue_time_us_max
FROM inference_events AS events
GROUP BY customer_id, model_name, minute
"""

# Issue 13: requests whose backend measured nothing (``metered: false``) counted apart, so a
# customer's usage says how much of it the gateway attributed rather than the backend measured.
# The view is replaced (dropped and made again): rows inserted between the two statements are
# not rolled up, so the migration runs at start, before this process writes. Rows rolled up
# before it keep 0 in the new columns (their records in inference_events still say `metered`).
_ADD_UNMETERED_COLUMNS = """
ALTER TABLE metrics_1m
    ADD COLUMN IF NOT EXISTS unmetered_requests UInt64,
    ADD COLUMN IF NOT EXISTS unmetered_gpu_seconds Float64
"""
_DROP_METRICS_1M_VIEW = "DROP VIEW IF EXISTS metrics_1m_mv"

_CREATE_METRICS_1M_VIEW_METERED = """
CREATE MATERIALIZED VIEW IF NOT EXISTS metrics_1m_mv TO metrics_1m AS
-- Aliases shadow columns in ClickHouse: ``events.gpu_seconds`` is the column, not the sum.
SELECT
    customer_id,
    model_name,
    toStartOfMinute(timestamp) AS minute,
    count() AS requests,
    countIf(status = 'success') AS success,
    countIf(status = 'error') AS errors,
    countIf(status = 'timeout') AS timeouts,
    countIf(status = 'cancelled') AS cancelled,
    sum(total_time_us) AS latency_us_sum,
    sum(toFloat64(total_time_us) * toFloat64(total_time_us)) AS latency_us_sq_sum,
    min(total_time_us) AS latency_us_min,
    max(total_time_us) AS latency_us_max,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(gpu_seconds) AS gpu_seconds,
    sumIf(events.gpu_seconds, billable) AS billed_gpu_seconds,
    countIf(billable) AS billable_requests,
    sum(cost_nanos) AS cost_nanos,
    sum(queue_time_us) AS queue_time_us_sum,
    max(queue_time_us) AS queue_time_us_max,
    countIf(NOT metered) AS unmetered_requests,
    sumIf(events.gpu_seconds, billable AND NOT metered) AS unmetered_gpu_seconds
FROM inference_events AS events
GROUP BY customer_id, model_name, minute
"""

_CREATE_OPERATOR_1H = """
CREATE TABLE IF NOT EXISTS operator_metrics_1h (
    device_uuid LowCardinality(String),
    hour DateTime('UTC'),
    gpu_seconds SimpleAggregateFunction(sum, Float64),
    requests SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    timeouts SimpleAggregateFunction(sum, UInt64),
    batch_size_sum SimpleAggregateFunction(sum, UInt64),
    batch_size_max SimpleAggregateFunction(max, UInt32),
    customers AggregateFunction(uniqExact, String)
) ENGINE = AggregatingMergeTree
ORDER BY (device_uuid, hour)
TTL hour + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = {dedup_window}
"""

_CREATE_OPERATOR_1H_VIEW = """
CREATE MATERIALIZED VIEW IF NOT EXISTS operator_metrics_1h_mv TO operator_metrics_1h AS
SELECT
    device_uuid,
    toStartOfHour(timestamp) AS hour,
    sum(gpu_seconds) AS gpu_seconds,
    count() AS requests,
    countIf(status = 'error') AS errors,
    countIf(status = 'timeout') AS timeouts,
    sum(batch_size) AS batch_size_sum,
    max(batch_size) AS batch_size_max,
    uniqExactState(CAST(customer_id AS String)) AS customers
FROM inference_events
GROUP BY device_uuid, hour
"""

# Latency of every finished request, whatever its status: it is what callers waited.
_CREATE_QUANTILES_1M = """
CREATE TABLE IF NOT EXISTS latency_quantiles_1m (
    model_name LowCardinality(String),
    minute DateTime('UTC'),
    latency_us AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), UInt64),
    requests SimpleAggregateFunction(sum, UInt64)
) ENGINE = AggregatingMergeTree
ORDER BY (model_name, minute)
TTL minute + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = {dedup_window}
"""

_CREATE_QUANTILES_1M_VIEW = """
CREATE MATERIALIZED VIEW IF NOT EXISTS latency_quantiles_1m_mv TO latency_quantiles_1m AS
SELECT
    model_name,
    toStartOfMinute(timestamp) AS minute,
    quantilesTDigestState(0.5, 0.9, 0.95, 0.99)(total_time_us) AS latency_us,
    count() AS requests
FROM inference_events
GROUP BY model_name, minute
"""

# One row per reconciliation run (issue 6): the hot path's own record of its checks.
_CREATE_RECONCILIATION_RUNS = """
CREATE TABLE IF NOT EXISTS reconciliation_runs (
    run_id String,
    started_at DateTime64(6, 'UTC'),
    window_start DateTime64(6, 'UTC'),
    window_end DateTime64(6, 'UTC'),
    status Enum8('reconciled' = 1, 'discrepancies' = 2, 'error' = 3),
    error Nullable(String),
    discrepant_keys UInt32,
    missing_in_hot UInt64,
    missing_in_cold UInt64,
    duplicated_in_hot UInt64,
    gpu_mismatches UInt64,
    repaired UInt64,
    report String
) ENGINE = MergeTree
ORDER BY started_at
"""

# Statements are idempotent (IF NOT EXISTS), so a migration cut short is simply re-run.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "inference_events", (_CREATE_EVENTS,)),
    Migration(2, "metrics_1m", (_CREATE_METRICS_1M, _CREATE_METRICS_1M_VIEW)),
    Migration(3, "operator_metrics_1h", (_CREATE_OPERATOR_1H, _CREATE_OPERATOR_1H_VIEW)),
    Migration(4, "latency_quantiles_1m", (_CREATE_QUANTILES_1M, _CREATE_QUANTILES_1M_VIEW)),
    Migration(5, "reconciliation_runs", (_CREATE_RECONCILIATION_RUNS,)),
    Migration(
        6,
        "metrics_1m_unmetered",
        (_ADD_UNMETERED_COLUMNS, _DROP_METRICS_1M_VIEW, _CREATE_METRICS_1M_VIEW_METERED),
    ),
)


def check_retention_days(retention_days: int) -> None:
    if isinstance(retention_days, bool) or not isinstance(retention_days, int):
        raise ValueError(f"retention_days must be an integer, not {retention_days!r}")
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1, not {retention_days}")


def applied_versions(client: Client) -> set[int]:
    client.command(_CREATE_MIGRATIONS_TABLE)
    result = client.query("SELECT version FROM schema_migrations")
    return {int(row[0]) for row in result.result_rows}


def apply_migrations(client: Client, retention_days: int) -> list[int]:
    """Apply the migrations not yet recorded in ``schema_migrations``, in order; the versions
    applied now (empty when the schema is current)."""
    check_retention_days(retention_days)
    done = applied_versions(client)
    applied: list[int] = []
    for migration in sorted(MIGRATIONS, key=lambda m: m.version):
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(
                statement.format(retention_days=retention_days, dedup_window=DEDUP_WINDOW)
            )
        client.command(
            "INSERT INTO schema_migrations (version, name, applied_at)"
            " VALUES ({version:UInt32}, {name:String}, now64(6, 'UTC'))",
            parameters={"version": migration.version, "name": migration.name},
        )
        applied.append(migration.version)
    return applied


_TTL_DAYS = re.compile(r"\bTTL\b.*?toIntervalDay\((\d+)\)", re.DOTALL)


def ttl_days(client: Client, table: str) -> int | None:
    """The retention in days of ``table``'s TTL as the server reports it (None: no TTL)."""
    result = client.query(
        "SELECT create_table_query FROM system.tables"
        " WHERE database = currentDatabase() AND name = {table:String}",
        parameters={"table": table},
    )
    if not result.result_rows:
        return None
    match = _TTL_DAYS.search(str(result.result_rows[0][0]))
    return int(match.group(1)) if match else None


def ensure_retention(client: Client, days: int) -> list[str]:
    """Set every table's TTL to ``days`` where it differs; the tables changed.

    The new TTL applies as parts merge: rewriting every part at once
    (``materialize_ttl_after_modify``) would stall a large table for a setting change.
    """
    check_retention_days(days)
    changed: list[str] = []
    for table, column in TTL_COLUMNS.items():
        if ttl_days(client, table) == days:
            continue
        client.command(
            f"ALTER TABLE {table} MODIFY TTL {column} + INTERVAL {days} DAY",
            settings={"materialize_ttl_after_modify": 0},
        )
        changed.append(table)
    return changed

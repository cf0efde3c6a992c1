"""The usage store on a real chDB directory: inserts, retried batches, lookups, outages, URLs,
and a directory held by another process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from render_gateway.core.usage_records import build_record, new_event_id
from render_gateway.metering.columns import records_json_to_table, records_to_table
from render_gateway.metering.store import (
    ClickHouseUsageStore,
    UsageStoreError,
    UsageStoreLocked,
    UsageUrl,
    default_usage_url,
    open_usage_store,
    parse_usage_url,
    redact_url,
)

NOW = time.time()


def usage(index: int, ended_at: float, customer: str = "acme") -> dict[str, Any]:
    return build_record(
        request_id=f"req-{index}",
        customer_id=customer,
        plan="pro",
        tier="sync",
        modality="image",
        family="flux",
        model="schnell",
        created_at=ended_at - 2.0,
        started_at=ended_at - 1.5,
        ended_at=ended_at,
        outcome="success",
        parameters={"gpu_seconds": 1.25, "device_uuid": "GPU-0a1b"},
        unit_price=0.0004,
        currency="USD",
    ).to_dict()


def batch(count: int, start: float = NOW - 3_600) -> list[dict[str, Any]]:
    return [usage(i, start + i * 0.5) for i in range(count)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ClickHouseUsageStore]:
    opened = open_usage_store(f"chdb://{tmp_path}/usage.chdb")
    yield opened
    opened.close()


def counts(store: ClickHouseUsageStore) -> tuple[int, ...]:
    """Rows in the raw table and requests in each rollup."""
    return (
        store.rows("SELECT count() FROM inference_events")[0][0],
        store.rows("SELECT sum(requests) FROM metrics_1m")[0][0],
        store.rows("SELECT sum(requests) FROM operator_metrics_1h")[0][0],
        store.rows("SELECT sum(requests) FROM latency_quantiles_1m")[0][0],
    )


def test_a_retried_batch_is_counted_once_in_the_table_and_every_rollup(
    store: ClickHouseUsageStore,
) -> None:
    first = records_to_table(batch(50))
    store.insert(first, dedup_token="batch-1")
    store.insert(first, dedup_token="batch-1")
    assert counts(store) == (50, 50, 50, 50)
    store.insert(records_to_table(batch(30, start=NOW - 7_200)), dedup_token="batch-2")
    assert counts(store) == (80, 80, 80, 80)


def test_batches_with_the_same_rollup_are_not_taken_for_retries(
    store: ClickHouseUsageStore,
) -> None:
    # Two different batches whose metrics_1m blocks are identical (same key, counts, sums):
    # each rollup's dedup token derives from its source block's, so both count.
    records = batch(2)
    twin = [{**r, "event_id": new_event_id()} for r in records]
    store.insert(records_to_table(records), dedup_token="a")
    store.insert(records_to_table(twin), dedup_token="b")
    assert counts(store) == (4, 4, 4, 4)


def test_an_empty_batch_inserts_nothing(store: ClickHouseUsageStore) -> None:
    store.insert(records_to_table([]))
    assert counts(store)[0] == 0


def test_existing_event_ids_finds_exactly_the_stored_ones(store: ClickHouseUsageStore) -> None:
    records = batch(2_500)  # more ids than one lookup query takes
    stored = records[::2]
    store.insert(records_to_table(stored))
    ids = [r["event_id"] for r in records]
    since, until = records[0]["timestamp"], records[-1]["timestamp"]
    assert store.existing_event_ids(ids, since, until) == {r["event_id"] for r in stored}
    # The bounds are inclusive, to the microsecond.
    first = stored[0]
    assert store.existing_event_ids(
        [first["event_id"]], first["timestamp"], first["timestamp"]
    ) == {first["event_id"]}
    assert store.existing_event_ids(ids, until + 1, until + 60) == set()
    assert store.existing_event_ids([], since, until) == set()


def test_an_outage_raises_and_the_retry_after_it_lands_once(store: ClickHouseUsageStore) -> None:
    table = records_to_table(batch(10))
    store.rows("DETACH TABLE inference_events")
    with pytest.raises(UsageStoreError, match=r"usage store chdb://.*insert of 10 rows failed"):
        store.insert(table, dedup_token="outage")
    store.rows("ATTACH TABLE inference_events")
    store.insert(table, dedup_token="outage")
    store.insert(table, dedup_token="outage")
    assert counts(store) == (10, 10, 10, 10)


def stored_json(records: list[dict[str, Any]]) -> bytes:
    """The batch as the usage stream hands it over: each record's JSON, one a line."""
    return b"\n".join(
        orjson.dumps({k: v for k, v in r.items() if k != "usage_claim"}) for r in records
    )


def edge_records() -> list[dict[str, Any]]:
    """Records that exercise every derivation: families in any case, optional fields null or
    missing, an error code, no dims, odd timestamps."""
    records = batch(6)
    records[0].update(family="FLUX", timestamp=float(int(NOW)) + 0.8226836)
    records[1].update(family="sd", status="error", error_code="backend_error", input_dims=[])
    records[2].update(device_uuid=None, job_id=None, backend=None, device_kind=None)
    for name in ("input_tokens", "output_tokens", "num_steps", "batch_size", "input_dims"):
        del records[3][name]
    records[4].update(timestamp=float(int(NOW)) + 0.0000005, gpu_seconds=0.1 + 0.2)  # 0.3...04
    records[5].update(family="Lumina", extra={"nested": {"x": [1, 2]}}, claim_error="no key")
    return records


def test_a_json_batch_stores_exactly_what_the_arrow_path_stores(
    store: ClickHouseUsageStore,
) -> None:
    records = edge_records()
    store.insert_json(stored_json(records), dedup_token="json")
    store.rows("CREATE TABLE arrow_copy AS inference_events")
    store.append("arrow_copy", records_json_to_table(
        [orjson.dumps(r) for r in records]))  # fmt: skip
    for a, b in (("inference_events", "arrow_copy"), ("arrow_copy", "inference_events")):
        assert store.rows(f"SELECT count() FROM (SELECT * FROM {a} EXCEPT SELECT * FROM {b})") == [
            (0,)
        ]
    assert counts(store) == (6, 6, 6, 6)
    assert store.rows("SELECT toString(model_type) FROM inference_events ORDER BY request_id") == [
        ("rectified_flow",), ("other",), ("rectified_flow",), ("rectified_flow",),
        ("rectified_flow",), ("rectified_flow",),
    ]  # fmt: skip


def test_a_retried_json_batch_is_counted_once_in_the_table_and_every_rollup(
    store: ClickHouseUsageStore,
) -> None:
    data = stored_json(batch(40))
    store.insert_json(data, dedup_token="json-1")
    store.insert_json(data, dedup_token="json-1")
    assert counts(store) == (40, 40, 40, 40)


def test_a_json_batch_with_a_record_missing_a_required_field_stores_nothing(
    store: ClickHouseUsageStore,
) -> None:
    records = batch(5)
    del records[3]["customer_id"]
    with pytest.raises(UsageStoreError, match="lacks a required field"):
        store.insert_json(stored_json(records), dedup_token="broken")
    records[3]["family"] = None
    records[3]["customer_id"] = "acme"
    with pytest.raises(UsageStoreError, match="lacks a required field"):
        store.insert_json(stored_json(records), dedup_token="broken-2")
    assert counts(store)[0] == 0


def test_a_query_error_is_a_store_error(store: ClickHouseUsageStore) -> None:
    with pytest.raises(UsageStoreError, match="UNKNOWN_TABLE"):
        store.rows("SELECT count() FROM no_such_table")
    store.rows("DETACH TABLE inference_events")
    with pytest.raises(UsageStoreError, match="UNKNOWN_TABLE"):
        store.existing_event_ids([new_event_id()], NOW, NOW)
    store.rows("ATTACH TABLE inference_events")
    assert store.existing_event_ids([new_event_id()], NOW, NOW) == set()


def test_queries_bind_parameters(store: ClickHouseUsageStore) -> None:
    store.insert(records_to_table([usage(1, NOW, customer="o'brien; DROP TABLE x")]))
    rows = store.rows(
        "SELECT count() FROM inference_events WHERE customer_id = {c:String}",
        {"c": "o'brien; DROP TABLE x"},
    )
    assert rows == [(1,)]


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    opened = open_usage_store(f"chdb://{tmp_path}/usage.chdb")
    assert opened.ping()
    opened.close()
    opened.close()  # idempotent
    assert not opened.ping()
    with pytest.raises(UsageStoreError, match="closed"):
        opened.insert(records_to_table(batch(1)))


def test_another_process_cannot_open_a_held_directory(store: ClickHouseUsageStore) -> None:
    script = (
        "import sys\n"
        "from render_gateway.metering.store import UsageStoreLocked, open_usage_store\n"
        "try:\n"
        "    open_usage_store(sys.argv[1])\n"
        "except UsageStoreLocked as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, store.url], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 3, child.stderr[-2000:]
    assert "in use by another process" in child.stdout
    assert store.ping()  # the holder is unaffected


def test_a_second_directory_in_one_process_is_a_plain_store_error(
    store: ClickHouseUsageStore, tmp_path: Path
) -> None:
    with pytest.raises(UsageStoreError) as raised:
        open_usage_store(f"chdb://{tmp_path}/other.chdb")
    assert not isinstance(raised.value, UsageStoreLocked)
    assert "already initialized" in str(raised.value)


@pytest.mark.parametrize(
    "url",
    ["postgres://db/usage", "clickhouse://host/db", "chdb://relative/path", "usage.chdb", ""],
)
def test_an_unknown_url_names_the_setting(url: str) -> None:
    with pytest.raises(ValueError, match=r"metering\.usage_url = .*expected chdb:///"):
        open_usage_store(url, setting_name="metering.usage_url")


def test_retention_must_be_a_positive_number_of_days(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        open_usage_store(f"chdb://{tmp_path}/usage.chdb", retention_days=0)


def test_http_urls_select_a_server_client() -> None:
    parsed = parse_usage_url("https://bob:s3cret@ch.example:9440/metering")
    assert parsed == UsageUrl(
        "https",
        host="ch.example",
        port=9440,
        username="bob",
        password="s3cret",
        database="metering",
    )
    assert parsed.redacted == "https://bob@ch.example:9440/metering"
    assert parse_usage_url("http://ch.example") == UsageUrl(
        "http", host="ch.example", port=8123, database="default"
    )
    assert redact_url("https://bob:s3cret@ch.example/x") == "https://bob:***@ch.example/x"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_unreachable_server_is_a_store_error_without_the_password() -> None:
    # No ClickHouse server can run on this machine (no docker; Debian's is from 2018), so the
    # HTTP transport is checked only this far: a refused connection is a clear store error.
    port = closed_port()
    for url, password in (
        (f"http://bob:hunter2@127.0.0.1:{port}/default", None),
        (f"http://bob@127.0.0.1:{port}/default", "hunter2"),
    ):
        with pytest.raises(UsageStoreError) as raised:
            open_usage_store(url, password=password)
        message = str(raised.value)
        assert f"usage store http://bob@127.0.0.1:{port}/default: cannot connect" in message
        assert "hunter2" not in message


def test_the_default_url_is_a_chdb_directory_under_the_data_dir(tmp_path: Path) -> None:
    url = default_usage_url(tmp_path / "data dir")
    assert url == f"chdb://{(tmp_path / 'data dir').resolve()}/usage.chdb".replace(" ", "%20")
    assert parse_usage_url(url).path == (tmp_path / "data dir" / "usage.chdb").resolve()

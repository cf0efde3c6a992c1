"""Schemathesis over the live gateway's /openapi.json: no 5xx, no response off its schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from support.gateway import ONE_WORKER_CONFIG, GatewayProcess, start_gateway, stop_gateway
from support.processes import WorkerProcess
from support.worker_api import wait_idle

CONFIG = ONE_WORKER_CONFIG


@pytest.fixture(scope="module")
def fuzzed_gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("fuzzed"), CONFIG.format(worker=worker.url))
    yield process
    stop_gateway(process)
    wait_idle(worker, timeout=120)


def test_gateway_honours_its_openapi_document(fuzzed_gateway: GatewayProcess) -> None:
    # Driven by hand rather than through schemathesis' pytest plugin (which does not load
    # under this pytest version): one hypothesis run per operation.
    schema = schemathesis.openapi.from_url(fuzzed_gateway.url + "/openapi.json")
    headers = {"Authorization": f"Bearer {fuzzed_gateway.admin_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    statuses: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def exercise(case: schemathesis.Case) -> None:
            response = case.call_and_validate(
                headers=headers,
                checks=[not_a_server_error, response_schema_conformance],
                timeout=120,
            )
            statuses.setdefault(case.operation.label, set()).add(response.status_code)

        exercise()
    # Every operation was called, and the generator got past input validation somewhere.
    assert set(statuses) == {operation.label for operation in operations}
    assert any(code < 300 for codes in statuses.values() for code in codes)
    print(statuses)

"""The console's job reads through a real gateway in front of the reference worker: GET /jobs
(filters, pages, who sees whose), GET /jobs/{id}/timeline and GET /queue/stats (admins)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from support.gateway import (
    ONE_WORKER_CONFIG,
    GatewayProcess,
    bearer,
    start_gateway,
    stop_gateway,
    wait_done,
    wait_status,
)
from support.processes import WorkerProcess
from support.worker_api import wait_idle


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(
        tmp_path_factory.mktemp("job-reads"), ONE_WORKER_CONFIG.format(worker=worker.url)
    )
    yield process
    stop_gateway(process)


@pytest.fixture(scope="module")
def alice(gateway: GatewayProcess) -> dict[str, str]:
    return bearer(gateway.new_key("alice"))


@pytest.fixture(scope="module")
def bob(gateway: GatewayProcess) -> dict[str, str]:
    return bearer(gateway.new_key("bob"))


@pytest.fixture(scope="module")
def admin(gateway: GatewayProcess) -> dict[str, str]:
    return bearer(gateway.admin_key)


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker, timeout=120)


def submit(gateway: GatewayProcess, headers: dict[str, str], **fields: Any) -> str:
    body = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
            "prompt": "a fox", "steps": 2, **fields}  # fmt: skip
    answer = httpx.post(gateway.url + "/queue", json=body, headers=headers, timeout=30)
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def listing(gateway: GatewayProcess, headers: dict[str, str], **params: Any) -> httpx.Response:
    return httpx.get(f"{gateway.url}/jobs", params=params, headers=headers, timeout=30)


def page(gateway: GatewayProcess, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    answer = listing(gateway, headers, **params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [job["id"] for job in body["data"]]


def assert_error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert body["error"] == code and body["message"] and body["request_id"].startswith("req_")
    return body


def test_customers_list_their_own_jobs_and_admins_everyones(
    gateway: GatewayProcess,
    alice: dict[str, str],
    bob: dict[str, str],
    admin: dict[str, str],
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    alices = [submit(gateway, alice) for _ in range(3)]
    bobs = [submit(gateway, bob)]
    for job_id in alices:
        wait_done(gateway, alice, job_id)
    wait_done(gateway, bob, bobs[0])

    mine = page(gateway, alice)
    assert ids(mine) == alices[::-1]  # newest first
    assert mine["has_more"] is False and mine["next_after"] is None
    single = httpx.get(f"{gateway.url}/jobs/{alices[0]}", headers=alice).json()
    listed = mine["data"][-1]
    assert listed["customer_id"] == "alice"
    assert {k: v for k, v in listed.items() if k != "customer_id"} == {
        k: v for k, v in single.items() if k not in ("output", "outputs")
    } | {"output": listed["output"], "outputs": listed["outputs"]}  # signed URLs differ per read
    assert listed["status"] == "complete" and listed["output"]

    # Pages: two, then the rest, through next_after.
    first = page(gateway, alice, limit=2)
    assert ids(first) == alices[:0:-1] and first["has_more"] is True
    assert first["next_after"] == alices[1]
    rest = page(gateway, alice, limit=2, after=first["next_after"])
    assert ids(rest) == alices[:1] and rest["has_more"] is False and rest["next_after"] is None

    # Filters.
    assert ids(page(gateway, alice, status="complete")) == alices[::-1]
    assert ids(page(gateway, alice, status="queued")) == []
    assert ids(page(gateway, alice, model="sd/tiny")) == alices[::-1]
    assert ids(page(gateway, alice, model="sd/other")) == []
    assert ids(page(gateway, alice, **{"from": before.isoformat()})) == alices[::-1]
    assert ids(page(gateway, alice, to=before.isoformat())) == []
    assert ids(page(gateway, alice, **{"from": "2000-01-01", "to": "2000-01-02"})) == []

    # Isolation: bob sees only his; naming alice, or paging after her job, is refused.
    assert ids(page(gateway, bob)) == bobs
    assert ids(page(gateway, bob, customer_id="bob")) == bobs
    assert_error(listing(gateway, bob, customer_id="alice"), 403, "forbidden")
    assert_error(listing(gateway, bob, after=alices[0]), 400, "job_not_found")

    # An admin: everyone's without customer_id, one customer's with it.
    everyone = ids(page(gateway, admin, limit=100))
    assert everyone[: len(alices) + 1] == [bobs[0], *alices[::-1]]
    assert ids(page(gateway, admin, customer_id="alice")) == alices[::-1]
    by_admin = page(gateway, admin, customer_id="bob")["data"]
    assert [job["customer_id"] for job in by_admin] == ["bob"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "many"},
        {"status": "finished"},
        {"model": "tiny"},
        {"model": "a/b/c"},
        {"from": "yesterday"},
        {"to": "2024-13-45"},
        {"from": "2024-05-02", "to": "2024-05-01"},
        {"from": "0001-01-01T00:00:00+01:00"},  # before the calendar once in UTC
        {"to": "9999-12-31T23:59:59-01:00"},  # after it
        {"after": "j_doesnotexist"},
        {"after": "x" * 65},
        {"customer_id": ""},
    ],
)
def test_bad_parameters_are_a_400_json_error(
    gateway: GatewayProcess, alice: dict[str, str], params: dict[str, str]
) -> None:
    answer = listing(gateway, alice, **params)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error"] and body["message"] and body["request_id"].startswith("req_")


def test_a_finished_jobs_timeline_is_its_events_in_order(
    gateway: GatewayProcess, alice: dict[str, str], bob: dict[str, str]
) -> None:
    job_id = submit(gateway, alice, steps=4)
    wait_done(gateway, alice, job_id)
    answer = httpx.get(f"{gateway.url}/jobs/{job_id}/timeline", headers=alice)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == job_id and body["source"] == "events"
    types = [event["type"] for event in body["events"]]
    assert types[0] == "queued" and types[1] == "started" and types[-1] == "complete"
    assert set(types[2:-1]) == {"progress"} and len(types) >= 4, types
    stamps = [datetime.fromisoformat(event["at"]) for event in body["events"]]
    assert stamps == sorted(stamps)
    assert all(abs(stamp - datetime.now(UTC)) < timedelta(minutes=5) for stamp in stamps)
    steps = [event["data"]["step"] for event in body["events"][2:-1]]
    assert steps == sorted(steps)
    assert body["events"][-1]["data"]["outputs"]

    # Another customer's job looks absent, as GET /jobs/{id} does.
    assert_error(httpx.get(f"{gateway.url}/jobs/{job_id}/timeline", headers=bob), 404,
                 "job_not_found")  # fmt: skip
    assert_error(
        httpx.get(f"{gateway.url}/jobs/j_unknown/timeline", headers=alice), 404, "job_not_found"
    )


def test_queue_stats_count_the_waiting_and_the_running(
    gateway: GatewayProcess, alice: dict[str, str], admin: dict[str, str]
) -> None:
    # The one slot is held by a long run, so what follows stays queued.
    running = submit(gateway, admin, steps=500)
    wait_status(gateway, admin, running, {"running"})
    queued = [
        submit(gateway, admin, priority="low"),
        submit(gateway, admin, priority="normal"),
        submit(gateway, admin, priority="low"),
    ]
    try:
        time.sleep(0.2)  # some wait to see
        answer = httpx.get(f"{gateway.url}/queue/stats", headers=admin)
        assert answer.status_code == 200, answer.text
        stats = answer.json()
        lanes = {lane["lane"]: lane for lane in stats["lanes"]}
        assert [lane["lane"] for lane in stats["lanes"]] == ["high", "normal", "low"]
        assert lanes["high"] == {"lane": "high", "depth": 0, "oldest_wait_seconds": None}
        assert lanes["normal"]["depth"] == 1 and lanes["low"]["depth"] == 2
        assert 0.2 <= lanes["low"]["oldest_wait_seconds"] < 60
        assert lanes["low"]["oldest_wait_seconds"] >= lanes["normal"]["oldest_wait_seconds"]
        assert stats["queued"] == 3 and stats["running"] == 1

        # The same snapshot feeds /metrics.
        metrics = httpx.get(f"{gateway.url}/metrics").text
        assert 'render_queue_depth{lane="low"} 2.0' in metrics
        waits = [
            line for line in metrics.splitlines()
            if line.startswith('render_queue_oldest_wait_seconds{lane="low"}')
        ]  # fmt: skip
        assert len(waits) == 1 and float(waits[0].split()[-1]) >= 0.2
        assert 'render_queue_oldest_wait_seconds{lane="high"} 0.0' in metrics

        assert ids(page(gateway, admin, status="queued", customer_id="admin")) == queued[::-1]
        assert ids(page(gateway, admin, status="running")) == [running]
        assert_error(httpx.get(f"{gateway.url}/queue/stats", headers=alice), 403, "forbidden")
        # A queued job's timeline: its admission only, from the job itself.
        timeline = httpx.get(f"{gateway.url}/jobs/{queued[0]}/timeline", headers=admin).json()
        assert timeline["source"] == "job"
        assert [event["type"] for event in timeline["events"]] == ["queued"]
        assert timeline["events"][0]["at"] is not None
    finally:
        for job_id in [*queued, running]:
            httpx.delete(f"{gateway.url}/jobs/{job_id}", headers=admin)
    for job_id in queued:
        assert wait_done(gateway, admin, job_id)["status"] == "cancelled"
    ended = httpx.get(f"{gateway.url}/jobs/{queued[0]}/timeline", headers=admin).json()
    assert [event["type"] for event in ended["events"]] == ["queued", "cancelled"]
    assert wait_done(gateway, admin, running)["status"] == "cancelled"

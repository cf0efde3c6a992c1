"""Two gateway processes, each with its own data dir, on one real redis-server through
``[gateway.shared] url``, sharing the embedded usage store, the audit CAS and the assets
directory: what they share is attacked from outside — an API key made through one is accepted
by the other, one rate-limit bucket spans both, a revocation through one is refused by the
other at once, and ``/usage`` answers the same on both though only the metering lease's holder
can open the embedded store (the other relays to it; when the holder is gone, a replica that
may not take metering over answers a 503 that names no path)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.gateway import (
    GatewayProcess,
    bearer,
    start_gateway,
    stop_gateway,
    wait_done,
)
from support.processes import WorkerProcess, stop_process
from support.redis_server import RedisServer, start_redis
from support.shared_stores import copy_secrets, replica_config

PLANS = """
[gateway.plans.default]
rate_capacity = 3
rate_refill_per_second = 0.001
monthly_gpu_seconds = 1000

[gateway.plans.admin]
rate_capacity = 1000
rate_refill_per_second = 100
admin = true
allow_high_priority = true
"""
BODY = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i", "prompt": "a fox",
        "steps": 2, "width": 64, "height": 64}  # fmt: skip


def config(worker: WorkerProcess, redis: RedisServer, shared: Path) -> str:
    return replica_config(worker.url, redis.url, shared, PLANS)


@contextlib.contextmanager
def two_gateways(
    worker: WorkerProcess, tmp_path: Path, second_roles: str = ""
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """a, then b (with ``second_roles`` as its ``roles`` when given), on a Redis of their own:
    what the first replica records there (the keys, the shared settings of
    cluster_agreement.py, the leases) belongs to this pair alone."""
    redis = start_redis(tmp_path / "redis")
    try:
        shared = tmp_path / "shared"
        shared.mkdir()
        text = config(worker, redis, shared)
        first = start_gateway(tmp_path / "a", text)
        try:
            copy_secrets(first.data_dir, tmp_path / "b")
            head, rest = text.split("\n[gateway.shared]", 1)
            roles = f"roles = {second_roles}\n" if second_roles else ""
            second = start_gateway(tmp_path / "b", head + roles + "\n[gateway.shared]" + rest)
        except BaseException:
            stop_gateway(first)
            raise
        try:
            yield first, second
        finally:
            stop_gateway(second)
            stop_gateway(first)
    finally:
        stop_process(redis.process)


@pytest.fixture
def gateways(
    worker: WorkerProcess, tmp_path: Path
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    with two_gateways(worker, tmp_path) as pair:
        yield pair


def usage_of(gateway: GatewayProcess, key: str, params: dict[str, str]) -> httpx.Response:
    return httpx.get(gateway.url + "/usage", params=params, headers=bearer(key), timeout=30)


def settled_usage(
    gateway: GatewayProcess, key: str, params: dict[str, str], requests: int
) -> dict[str, Any]:
    """The report once ``requests`` records are in the usage store and none is pending."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = usage_of(gateway, key, params)
        body: dict[str, Any] = response.json()
        settled = response.status_code == 200 and body["pending_records"] == 0
        if settled and body["totals"]["requests"] == requests:
            return body
        assert response.status_code in (200, 503), body  # not yet: no other refusal
        time.sleep(0.2)
    raise AssertionError(f"usage never showed {requests} requests: {body}")


def assert_no_path(body: dict[str, Any], *paths: Path) -> None:
    text = str(body)
    for path in paths:
        assert str(path) not in text
    assert "/tmp" not in text and "chdb" not in text and "Traceback" not in text


def test_two_gateways_share_keys_one_bucket_revocations_and_usage_reads(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = gateways
    assert a.admin_key.startswith("rk_")
    assert b.admin_key == ""  # the keys already existed in the shared store: none printed
    # b does not hold metering (a started first): its /usage is a's, relayed.
    assert usage_of(b, a.admin_key, {}).status_code == 200
    created = a.cli("keys", "create", "--customer", "shared-customer").strip().splitlines()
    key_id, key = created[-2].split()[1], created[-1]  # "key <id> for customer …", the secret
    headers = bearer(key)
    codes = []
    job_ids = []
    for gateway in (a, b, a, b):
        response = httpx.post(gateway.url + "/queue", json=BODY, headers=headers, timeout=30)
        codes.append(response.status_code)
        if response.status_code == 202:
            job_ids.append((gateway, response.json()["id"]))
    assert codes == [202, 202, 202, 429]  # capacity 3, one bucket across both gateways
    for gateway, job_id in job_ids:
        assert wait_done(gateway, headers, job_id)["status"] == "complete"

    # One fixed range, so that both reports are of the same moment's question.
    now = datetime.now(UTC)
    window = {"from": (now - timedelta(days=1)).isoformat(),
              "to": (now + timedelta(days=1)).isoformat(), "group_by": "model"}  # fmt: skip
    on_holder = settled_usage(a, key, window, requests=3)
    on_other = usage_of(b, key, window)
    assert on_other.status_code == 200
    assert on_other.json() == on_holder
    assert on_holder["totals"]["billable_requests"] == 3
    assert on_holder["customer_id"] == "shared-customer"
    # The admins' dashboard is relayed too; an admin's customer_id query goes along.
    dashboard = httpx.get(b.url + "/usage/dashboard", headers=bearer(a.admin_key), timeout=30)
    assert dashboard.status_code == 200 and "per_minute" in dashboard.json()
    # So is capacity planning: the holder's read of the store, both replicas' slots shared.
    capacity = httpx.get(b.url + "/capacity", headers=bearer(a.admin_key), timeout=30)
    assert capacity.status_code == 200, capacity.text
    assert [(m["model"], m["requests"]) for m in capacity.json()["models"]] == [
        ("image/sd/tiny", on_holder["totals"]["requests"])
    ]
    other_customer = usage_of(b, a.admin_key, {**window, "customer_id": "shared-customer"})
    assert other_customer.json()["totals"] == on_holder["totals"]
    # GET /backends on b: its own pool, with the hot path's part (the device) relayed from a.
    listed = httpx.get(b.url + "/backends", headers=bearer(a.admin_key), timeout=30).json()
    assert "usage_unavailable" not in listed
    assert listed["backends"] and all(x["device_uuid"] for x in listed["backends"])
    # A job's records through b, read on a.
    job_on_b = next(job_id for gateway, job_id in job_ids if gateway is b)
    records = httpx.get(
        b.url + "/usage/records", headers=headers, params={"job_id": job_on_b}, timeout=30
    ).json()["records"]
    assert [r["job_id"] for r in records] == [job_on_b]
    # The holder's refusals come back as they are: a customer may not read another's usage.
    refused = usage_of(b, key, {"customer_id": "admin"})
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    # A request that says it was relayed already is never relayed again (no loops).
    looped = httpx.get(b.url + "/usage", headers={**headers, "X-Render-Forwarded": "1"}, timeout=30)
    assert looped.status_code == 503 and looped.json()["error"] == "usage_unavailable"
    assert looped.headers["Retry-After"]

    b.cli("keys", "revoke", key_id)
    refused = httpx.get(a.url + "/usage", headers=headers, timeout=30)
    assert refused.status_code == 401
    assert refused.json()["error"] == "revoked_api_key"


def test_when_the_holder_is_gone_usage_is_a_503_without_paths(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    # b may not run metering, so it never opens the embedded store itself: the holder's
    # answer or a 503.
    with two_gateways(worker, tmp_path, '["api", "scheduler"]') as (a, b):
        admin = bearer(a.admin_key)
        job = httpx.post(b.url + "/queue", json=BODY, headers=admin, timeout=30)
        assert job.status_code == 202
        assert wait_done(b, admin, job.json()["id"])["status"] == "complete"
        on_holder = settled_usage(a, a.admin_key, {}, requests=1)
        assert usage_of(b, a.admin_key, {}).json()["totals"] == on_holder["totals"]
        # A crash: the metering lease stays a's until it expires, but a no longer answers.
        a.process.kill()
        a.process.wait(timeout=30)
        for wait in (16.0, 0.0):  # the lease held by the dead, then (after its ttl) no holder
            gone = usage_of(b, a.admin_key, {})
            assert gone.status_code == 503
            body = gone.json()
            assert body["error"] == "usage_unavailable" and gone.headers["Retry-After"]
            assert_no_path(body, a.data_dir, b.data_dir)
            dashboard = httpx.get(b.url + "/usage/dashboard", headers=admin, timeout=30)
            assert dashboard.status_code == 503
            assert_no_path(dashboard.json(), a.data_dir, b.data_dir)
            # The backends still list: only the hot path's part is missing, and says so.
            listed = httpx.get(b.url + "/backends", headers=admin, timeout=30)
            assert listed.status_code == 200 and listed.json()["usage_unavailable"] is True
            assert all(x["device_uuid"] is None and x["recent_failures"] == []
                       for x in listed.json()["backends"])  # fmt: skip
            time.sleep(wait)  # ROLE_LEASE_SECONDS and a little


def test_a_delete_on_one_replica_stops_the_run_on_another_and_sse_follows_it(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    # b serves the API only: every job runs on a's scheduler, and b is asked about it.
    with two_gateways(worker, tmp_path, '["api"]') as (a, b):
        admin = bearer(a.admin_key)
        # Long enough (several seconds here) that the cancel lands well before the last step.
        body = {**BODY, "steps": 500, "width": 256, "height": 256}
        job_id = httpx.post(b.url + "/queue", json=body, headers=admin, timeout=30).json()["id"]
        events: list[tuple[str, str]] = []  # (event, id) as b's stream delivers them
        answers: list[tuple[int, float]] = []
        with httpx.stream(
            "GET", f"{b.url}/jobs/{job_id}/events", headers=admin, timeout=60
        ) as stream:
            name, event_id = "", ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("id:"):
                    event_id = line.split(":", 1)[1].strip()
                elif line == "" and name:
                    events.append((name, event_id))
                    if name == "progress" and sum(e == "progress" for e, _ in events) == 3:
                        # The run is on a (b runs no scheduler): stop it through b.
                        stopped = httpx.delete(f"{b.url}/jobs/{job_id}", headers=admin)
                        assert stopped.status_code in (202, 204), stopped.text
                        answers.append((stopped.status_code, time.monotonic()))
                    if name in ("complete", "error"):
                        break
                    name = ""
        done = wait_done(b, admin, job_id)
        assert done["status"] == "cancelled", (answers, time.monotonic(), events[-5:], done)
        assert "started" in [e for e, _ in events] and events[-1][0] == "error"
        steps = [e for e, _ in events if e == "progress"]
        assert 3 <= len(steps) < 500  # stopped before its last step
        ids = [i for _, i in events if i]
        assert len(ids) == len(set(ids))  # each event once
        # Billed for the steps that ran, by the worker's signed claim, on either replica.
        usage = done["usage"]
        assert usage["status"] == "cancelled" and usage["billable"] and usage["gpu_seconds"] > 0
        assert httpx.get(f"{a.url}/jobs/{job_id}", headers=admin).json()["status"] == "cancelled"


def test_job_reads_span_the_replicas(worker: WorkerProcess, tmp_path: Path) -> None:
    """GET /jobs on one replica lists what was queued through the other (the Redis job store's
    indexes), customers their own and admins everyone's; a timeline read on the replica that
    did not run the job has every event's time (the Redis event bus); /queue/stats counts the
    queue on Redis."""
    with two_gateways(worker, tmp_path, '["api"]') as (a, b):
        admin = bearer(a.admin_key)
        alice, bob = bearer(a.new_key("alice")), bearer(a.new_key("bob"))

        def queue(headers: dict[str, str]) -> str:
            answer = httpx.post(b.url + "/queue", json=BODY, headers=headers, timeout=30)
            assert answer.status_code == 202, answer.text
            job_id: str = answer.json()["id"]
            return job_id

        alices = [queue(alice), queue(alice)]
        bobs = [queue(bob)]
        for job_id in alices:
            wait_done(a, alice, job_id)
        wait_done(a, bob, bobs[0])

        def listed(headers: dict[str, str], **params: Any) -> list[str]:
            answer = httpx.get(a.url + "/jobs", params=params, headers=headers, timeout=30)
            assert answer.status_code == 200, answer.text
            return [job["id"] for job in answer.json()["data"]]

        assert listed(alice) == alices[::-1]
        assert listed(bob, status="complete", model="sd/tiny") == bobs
        assert listed(admin) == [bobs[0], *alices[::-1]]
        assert listed(admin, customer_id="alice", limit=1) == alices[1:]
        refused = httpx.get(a.url + "/jobs", params={"customer_id": "alice"}, headers=bob)
        assert refused.status_code == 403, refused.text

        timeline = httpx.get(f"{b.url}/jobs/{alices[0]}/timeline", headers=alice).json()
        assert timeline["source"] == "events"
        types = [event["type"] for event in timeline["events"]]
        assert types[:2] == ["queued", "started"] and types[-1] == "complete"
        assert "progress" in types
        stamps = [datetime.fromisoformat(event["at"]) for event in timeline["events"]]
        assert stamps == sorted(stamps)

        stats = httpx.get(f"{b.url}/queue/stats", headers=admin).json()
        assert stats == {
            "lanes": [
                {"lane": lane, "depth": 0, "oldest_wait_seconds": None}
                for lane in ("high", "normal", "low")
            ],
            "running": 0,
            "queued": 0,
        }

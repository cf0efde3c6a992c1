"""SSE streams of a real gateway process end: at once when the client already has the terminal
event (a browser EventSource reconnecting after ``complete``), with a terminal event for a job
cancelled while queued, and within seconds when the caller's key is revoked."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.gateway import (
    ONE_WORKER_CONFIG,
    GatewayProcess,
    start_gateway,
    stop_gateway,
    wait_status,
)
from support.processes import WorkerProcess
from support.worker_api import wait_idle


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(
        tmp_path_factory.mktemp("events"), ONE_WORKER_CONFIG.format(worker=worker.url)
    )
    yield process
    stop_gateway(process)


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker, timeout=120)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(gateway: GatewayProcess, headers: dict[str, str], steps: int) -> str:
    body = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
            "prompt": "a fox", "steps": steps}  # fmt: skip
    answer = httpx.post(gateway.url + "/queue", json=body, headers=headers, timeout=30)
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def read_stream(
    gateway: GatewayProcess, headers: dict[str, str], job_id: str, timeout: float = 10
) -> tuple[list[tuple[str, str | None]], float]:
    """(event name, id) of every event until the server closes; and how long that took. A
    stream that stays open fails with a read timeout."""
    started = time.monotonic()
    events: list[tuple[str, str | None]] = []
    with httpx.stream(
        "GET", f"{gateway.url}/jobs/{job_id}/events", headers=headers, timeout=timeout
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        name, event_id = None, None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("id:"):
                event_id = line[3:].strip()
            elif not line and name is not None:
                events.append((name, event_id))
                name, event_id = None, None
    return events, time.monotonic() - started


def test_last_event_id_at_or_past_the_terminal_event_closes_at_once(
    gateway: GatewayProcess,
) -> None:
    headers = auth(gateway.admin_key)
    job_id = submit(gateway, headers, steps=2)
    wait_status(gateway, headers, job_id, {"complete"})
    events, _ = read_stream(gateway, headers, job_id)
    assert events[-1][0] == "complete"
    terminal_id = int(events[-1][1] or 0)
    assert terminal_id == len(events)
    for last_seen in (terminal_id, terminal_id + 1, 10**17):
        resumed, took = read_stream(
            gateway, {**headers, "Last-Event-ID": str(last_seen)}, job_id, timeout=5
        )
        assert resumed == [] and took < 2, (last_seen, resumed, took)
    # One before the terminal event: just the terminal event, then the end.
    resumed, _ = read_stream(gateway, {**headers, "Last-Event-ID": str(terminal_id - 1)}, job_id)
    assert resumed == [("complete", str(terminal_id))]


def test_a_job_cancelled_while_queued_ends_its_stream_with_a_terminal_event(
    gateway: GatewayProcess,
) -> None:
    headers = auth(gateway.admin_key)
    running = submit(gateway, headers, steps=500)  # holds the only slot
    wait_status(gateway, headers, running, {"running"})
    queued = submit(gateway, headers, steps=1)
    try:
        assert httpx.delete(f"{gateway.url}/jobs/{queued}", headers=headers).status_code == 204
        events, took = read_stream(gateway, headers, queued)
        assert [name for name, _ in events] == ["error"] and took < 2
        # Reconnecting after it (the EventSource way) closes at once too.
        again, took = read_stream(
            gateway, {**headers, "Last-Event-ID": events[-1][1] or "1"}, queued, timeout=5
        )
        assert again == [] and took < 2
    finally:
        httpx.delete(f"{gateway.url}/jobs/{running}", headers=headers)
    wait_status(gateway, headers, running, {"cancelled", "complete", "error"})


def test_the_stream_of_a_revoked_key_ends_within_seconds(gateway: GatewayProcess) -> None:
    admin = auth(gateway.admin_key)
    secret = gateway.new_key("dave")
    dave = auth(secret)
    running = submit(gateway, admin, steps=500)  # keeps dave's job queued
    wait_status(gateway, admin, running, {"running"})
    queued = submit(gateway, dave, steps=1)
    ended_at: list[float] = []
    failures: list[BaseException] = []

    def follow() -> None:
        try:
            read_stream(gateway, dave, queued, timeout=60)
            ended_at.append(time.monotonic())
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    reader = threading.Thread(target=follow)
    reader.start()
    try:
        time.sleep(1.0)
        assert reader.is_alive(), failures  # the stream is open while the job waits
        listed = next(line for line in gateway.cli("keys", "list").splitlines() if "dave" in line)
        key_id = next(p for p in listed.replace("│", " ").split() if p.startswith("key_"))
        gateway.cli("keys", "revoke", key_id)
        revoked_at = time.monotonic()
        reader.join(timeout=15)
        assert not reader.is_alive() and not failures, failures
        assert ended_at[0] - revoked_at < 5
    finally:
        httpx.delete(f"{gateway.url}/jobs/{running}", headers=admin)
        httpx.delete(f"{gateway.url}/jobs/{queued}", headers=admin)
        reader.join(timeout=30)
    wait_status(gateway, admin, running, {"cancelled", "complete", "error"})


def test_after_a_restart_the_rebuilt_terminal_event_is_not_sent_twice(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    data = tmp_path / "restarted"
    first = start_gateway(data, ONE_WORKER_CONFIG.format(worker=worker.url))
    headers = auth(first.admin_key)
    try:
        job_id = submit(first, headers, steps=2)
        wait_status(first, headers, job_id, {"complete"})
    finally:
        stop_gateway(first)
    again = start_gateway(data, ONE_WORKER_CONFIG.format(worker=worker.url))
    try:
        # This process never saw the job's events: the terminal event comes from the store,
        # with an id past any live one...
        events, _ = read_stream(again, headers, job_id)
        assert [name for name, _ in events] == ["complete"]
        rebuilt = events[0][1]
        assert rebuilt is not None and int(rebuilt) == 10**18 - 1
        # ...so an EventSource that saw it and reconnects is closed at once, with nothing.
        resumed, took = read_stream(again, {**headers, "Last-Event-ID": rebuilt}, job_id, 5)
        assert resumed == [] and took < 2
    finally:
        stop_gateway(again)

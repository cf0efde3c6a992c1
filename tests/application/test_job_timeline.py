"""A job's timeline from its event log, or from its own times once the log is gone."""

from __future__ import annotations

from render_gateway.application.job_timeline import timeline
from render_gateway.core.jobs import Job, JobError, JobStatus
from render_gateway.core.lanes import Lane
from render_gateway.stores.events import JobEvent

T0 = 1_700_000_000.0
REQUEST = {"modality": "image", "family": "sd", "model": "tiny", "prompt": "x"}


def url(asset: str) -> str:
    return f"https://assets.example/{asset}"


def ended(status: JobStatus, **changes: object) -> Job:
    job = Job(
        id="j_1", customer_id="c1", lane=Lane.low, request=REQUEST, created_at=T0,
        status=status, started_at=T0 + 1, completed_at=T0 + 3,
    )  # fmt: skip
    return job.evolve(**changes)


def test_from_the_log_with_previews_reduced_to_their_step() -> None:
    job = ended(JobStatus.complete, outputs=("a_1",))
    log = [
        JobEvent(1, "started", {}, T0 + 1),
        JobEvent(2, "progress", {"progress": 0.5, "step": 1}, T0 + 1.5),
        JobEvent(3, "preview", {"step": 1, "image": "iVBORw0KGgo" * 1000}, T0 + 1.6),
        JobEvent(4, "complete", {"output": url("a_1"), "outputs": [url("a_1")]}, None),
    ]
    assert timeline(job, log, url) == {
        "id": "j_1",
        "source": "events",
        "events": [
            {"type": "queued", "at": "2023-11-14T22:13:20Z", "data": {"lane": "low"}},
            {"type": "started", "at": "2023-11-14T22:13:21Z", "data": {}},
            {"type": "progress", "at": "2023-11-14T22:13:21.500000Z",
             "data": {"progress": 0.5, "step": 1}},
            {"type": "preview", "at": "2023-11-14T22:13:21.600000Z", "data": {"step": 1}},
            # Published by a build before the timestamps: no time.
            {"type": "complete", "at": None,
             "data": {"output": url("a_1"), "outputs": [url("a_1")]}},
        ],
    }  # fmt: skip


def test_without_a_log_the_jobs_own_times() -> None:
    done = timeline(ended(JobStatus.complete, outputs=("a_1",)), [], url)
    assert done["source"] == "job"
    assert [(e["type"], e["at"]) for e in done["events"]] == [
        ("queued", "2023-11-14T22:13:20Z"),
        ("started", "2023-11-14T22:13:21Z"),
        ("complete", "2023-11-14T22:13:23Z"),
    ]
    assert done["events"][-1]["data"] == {"output": url("a_1"), "outputs": [url("a_1")]}
    failed = timeline(ended(JobStatus.error, error=JobError("oom", "out of memory", True)), [], url)
    assert failed["events"][-1] == {
        "type": "error", "at": "2023-11-14T22:13:23Z",
        "data": {"code": "oom", "message": "out of memory"},
    }  # fmt: skip
    queued = Job(id="j_2", customer_id="c1", lane=Lane.normal, request=REQUEST, created_at=T0)
    assert [e["type"] for e in timeline(queued, [], url)["events"]] == ["queued"]


def test_a_cancelled_jobs_end_is_named_cancelled() -> None:
    job = ended(JobStatus.cancelled, started_at=None)
    from_job = timeline(job, [], url)
    assert [e["type"] for e in from_job["events"]] == ["queued", "cancelled"]
    log = [JobEvent(1, "error", {"code": "cancelled", "message": "cancelled"}, T0 + 2)]
    from_log = timeline(job, log, url)
    assert [e["type"] for e in from_log["events"]] == ["queued", "cancelled"]
    assert from_log["events"][-1]["data"]["code"] == "cancelled"

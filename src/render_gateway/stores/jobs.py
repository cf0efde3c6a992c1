"""The job store protocol: durable jobs, the priority queue over them, and run leases.

The operations are the ones a store shared by many gateway replicas needs (Redis is next), not
the ones SQLite makes easy: every decision that two replicas could race on is one atomic store
operation — admission with its depth limits (``submit``), taking the head of the queue
(``claim``), ending a job exactly once (``finish``, guarded by ``expect``) — and a running job is
held by a lease its replica renews (``heartbeat``), so a replica that dies leaves runs that
``expired_runs`` finds. Policy stays with the caller: the store never decides to requeue or fail
a job, it only reports which ones need a decision (``Opened.orphaned``, ``expired_runs``,
``expired_queued``).

Order: three lanes in strict priority, first in, first out inside a lane (by admission order,
which a requeued job keeps); positions are exact.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, Protocol

from render_gateway.core.jobs import Job, JobError, JobStatus
from render_gateway.core.usage_records import UsageRecord
from render_gateway.stores.urls import parse_store_url
from render_gateway.stores.usage_log import UsageStream


class IdempotencyConflict(Exception):
    """The customer reused an idempotency key with a different request body (a 409)."""

    def __init__(self, existing: Job) -> None:
        super().__init__(f"idempotency key already used for job {existing.id} with another body")
        self.existing = existing


class QueueFull(Exception):
    """Admitting the job would take the customer's queued jobs (``customer``) or all queued jobs
    (``total``) past ``limit``; nothing was stored."""

    def __init__(self, kind: Literal["customer", "total"], limit: int) -> None:
        super().__init__(f"the {kind} queue limit of {limit} queued jobs is reached")
        self.kind: Literal["customer", "total"] = kind
        self.limit = limit


class CancelResult(StrEnum):
    queued = "queued"  # it is queued: the caller settles it cancelled (finish, expect={queued})
    running = "running"  # it is running: marked cancel_requested; the caller signals the run
    terminal = "terminal"  # already finished (a 409)
    not_found = "not_found"  # unknown, or another customer's (a 404)


@dataclass(frozen=True)
class JobFilter:
    """Which jobs ``JobStore.listed`` pages through. ``customer_id`` None: every customer's (an
    admin's read); the scope of a cursor is the customer and the modality, so a page goes on
    after a job that has since left ``status`` (a queued job that ended meanwhile). The other
    fields only narrow what is returned."""

    customer_id: str | None = None
    modality: str | None = None  # ``request["modality"]``
    status: JobStatus | None = None
    family: str | None = None  # ``request["family"]``
    model: str | None = None  # ``request["model"]`` (with ``family``: "family/model")
    created_from: float | None = None  # created_at >= this
    created_before: float | None = None  # created_at < this

    def in_scope(self, job: Job) -> bool:
        """Whether ``job`` is within the cursor's scope (customer and modality)."""
        return (self.customer_id is None or job.customer_id == self.customer_id) and (
            self.modality is None or job.request.get("modality") == self.modality
        )

    def matches(self, job: Job) -> bool:
        request = job.request
        return (
            self.in_scope(job)
            and (self.status is None or job.status is self.status)
            and (self.family is None or request.get("family") == self.family)
            and (self.model is None or request.get("model") == self.model)
            and (self.created_from is None or job.created_at >= self.created_from)
            and (self.created_before is None or job.created_at < self.created_before)
        )


@dataclass(frozen=True)
class LaneSnapshot:
    depth: int
    oldest_created_at: float | None  # created_at of the lane's head (admitted first); None: empty


@dataclass(frozen=True)
class QueueSnapshot:
    """What is waiting and running now (GET /queue/stats, the /metrics gauges)."""

    lanes: dict[str, LaneSnapshot]  # every lane, in priority order, empty ones included
    running: int


@dataclass(frozen=True)
class Opened:
    # Jobs left 'running' by a process that is gone, oldest first (for the embedded store, which
    # one process owns: every job running at open). They stay running until the caller requeues
    # or fails them through its settle code; the store does not decide.
    orphaned: tuple[Job, ...]
    queued: int


class JobStore(Protocol):
    @property
    def usage_log(self) -> UsageStream:
        """Where finished requests' usage records go (in the same commits as the jobs)."""
        ...

    async def open(self) -> Opened: ...

    async def close(self) -> None: ...

    async def submit(
        self, job: Job, *, max_queued_for_customer: int, max_queued_total: int
    ) -> tuple[Job, bool]:
        """Store a new queued job durably; returns (job, created). Atomic with the depth
        checks: QueueFull if the customer's queued jobs or all queued jobs would exceed their
        limit. A repeated idempotency key with the same digest returns (existing, False) and is
        not counted against the limits; with another digest, IdempotencyConflict."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def position(self, job_id: str) -> int | None:
        """How many queued jobs run before this one (0: next); None if it is not queued."""
        ...

    async def depth(self) -> dict[str, int]:
        """Queued jobs per lane name (every lane, zeros included)."""
        ...

    async def queued_for(self, customer_id: str) -> int:
        """How many of this customer's jobs are queued."""
        ...

    async def claim(
        self,
        now: float,
        *,
        runnable: frozenset[str],
        served: frozenset[str],
        holder: str,
        lease_seconds: float,
    ) -> Job | None:
        """One atomic step on the head of the highest non-empty lane: if its
        ``route_key(request)`` is in ``runnable``, or not in ``served`` (its backend left: the
        caller fails it), mark it running, held by ``holder`` until ``now + lease_seconds``,
        and return it. Otherwise None: the head waits for capacity on its own route and is
        never overtaken. None when nothing is queued."""
        ...

    async def heartbeat(
        self, job_ids: Collection[str], holder: str, now: float, lease_seconds: float
    ) -> set[str]:
        """Extend to ``now + lease_seconds`` the leases ``holder`` still holds (running, its
        own, not lapsed before ``now``); returns those ids. A run whose id is missing was lost:
        stop it and do not settle it."""
        ...

    async def expired_runs(self, now: float) -> list[Job]:
        """Running jobs whose lease lapsed before ``now`` (their replica died), oldest first:
        the caller requeues or fails each."""
        ...

    async def request_cancel(self, job_id: str, customer_id: str) -> CancelResult:
        """Classify a customer's cancel. For a queued or running job, marks it
        ``cancel_requested`` durably (so a run that is lost and claimed again is cancelled, not
        run again, and a claim that races the caller's settle of a queued job returns it
        marked); the status itself is changed only by ``finish``."""
        ...

    async def finish(
        self,
        job_id: str,
        status: JobStatus,
        now: float,
        *,
        expect: frozenset[JobStatus],
        outputs: tuple[str, ...] = (),
        error: JobError | None = None,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
        usage: UsageRecord | None = None,
        holder: str | None = None,
    ) -> Job | None:
        """The one way to a terminal ``status``, from a status in ``expect`` only (queued for a
        cancel or a ttl, running for a run's end): takes a queued job out of the queue, ends a
        running job's lease, merges ``extra`` into the job's extra fields, appends ``usage``
        to the usage log and lists the job as ``unfollowed``, all in one commit. None,
        changing nothing, when the job is in no expected status (another path settled it:
        exactly once). KeyError for an unknown id.

        ``holder`` fences a run's own end: a running job is ended only while its run is held
        by ``holder``. A replica whose lease lapsed and whose job was requeued and claimed by
        another replica has its late result refused (None), so one job never ends twice nor
        bills two runs. None (no fence) is for paths that end a job not as its run's holder:
        a cancel of a queued job, a ttl, the recovery of an expired run."""
        ...

    async def unfollowed(self, ended_before: float, limit: int) -> list[Job]:
        """Jobs ``finish`` ended before ``ended_before`` whose follow-ups (the terminal event,
        the budget settlement, the webhook: application/settle.py) ``followed_up`` has not
        confirmed, oldest end first, at most ``limit``. ``finish`` lists a job here in its own
        commit, so a process that died (or lost its Redis) between the commit and the
        follow-ups leaves them for another to run again: each is idempotent."""
        ...

    async def followed_up(self, job_id: str) -> None:
        """The job's follow-ups are done: ``unfollowed`` no longer lists it."""
        ...

    async def requeue(
        self,
        job_id: str,
        *,
        extra: dict[str, Any] | None = None,
        count_retry: bool,
        holder: str | None = None,
    ) -> Job | None:
        """Put a running job back at its own place in its lane (admission order, ahead of the
        jobs admitted after it), ending its lease and merging ``extra``; retries + 1 when
        ``count_retry`` (a lost run), unchanged otherwise (a clean stop). None if not running,
        or (``holder`` given) if its run is held by another holder (fenced as ``finish``)."""
        ...

    async def unsettled(self) -> list[Job]:
        """Jobs admitted but not finished (queued or running), oldest first."""
        ...

    async def listed(
        self, where: JobFilter, *, after: str | None, limit: int, newest_first: bool
    ) -> list[Job]:
        """The jobs ``where`` matches, in admission order or (``newest_first``) its reverse, at
        most ``limit``: a cursor page. With ``after``, only the jobs that come after that one
        in this order; KeyError when ``after`` is not a job in ``where``'s scope (its customer,
        if any, and modality, if any: ``JobFilter.in_scope``)."""
        ...

    async def queue_snapshot(self) -> QueueSnapshot:
        """Per lane its depth and its head's created_at, and how many jobs are running."""
        ...

    async def expired_queued(self, now: float) -> list[str]:
        """Ids of queued jobs whose ttl passed by ``now``; the caller settles each (finish with
        expect={queued})."""
        ...


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7396 JSON merge patch, as SQLite's json_patch applies ``extra`` (None deletes a key,
    objects merge, anything else replaces)."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            current = merged.get(key)
            merged[key] = merge_patch(current if isinstance(current, dict) else {}, value)
        else:
            merged[key] = value
    return merged


def check_finish(status: JobStatus, expect: frozenset[JobStatus]) -> None:
    """``finish``'s arguments, refused alike by every implementation: it ends a job (a terminal
    status) and only from a status it has not ended in."""
    if not status.terminal:
        raise ValueError(f"finish needs a terminal status, not {status}")
    if any(expected.terminal for expected in expect):
        raise ValueError("a settled job is never settled again: expect only queued/running")


def open_job_store(
    url: str, *, synchronous: str = "FULL", wait_replicas: int = 0, wait_timeout_ms: int = 1000
) -> JobStore:
    """The job store ``[gateway.stores] jobs`` names: ``sqlite:///abs/path/jobs.db`` (embedded,
    durable; ``synchronous`` is its fsync level), ``redis://`` / ``rediss://`` (shared by every
    replica, with its usage stream on the same Redis; ``wait_replicas`` > 0 acknowledges an
    admission or an end only once that many Redis replicas have it: redis_jobs.ReplicaWait)
    or ``memory://`` (this process only, for in-process tests; its usage log is its own, in
    memory too). Not opened yet: call
    ``open()``."""
    parsed = parse_store_url("jobs", url, ("sqlite", "memory", "redis", "rediss"))
    # Imported here: the implementations import this module for the shared types.
    if parsed.scheme in ("redis", "rediss"):
        from render_gateway.stores.redis_jobs import ReplicaWait, open_redis_job_store

        wait = ReplicaWait(wait_replicas, wait_timeout_ms) if wait_replicas else None
        return open_redis_job_store(url, wait=wait)
    if parsed.scheme == "memory":
        from render_gateway.stores.memory_jobs import MemoryJobStore

        return MemoryJobStore()
    from render_gateway.stores.sqlite_jobs import SqliteJobStore

    return SqliteJobStore(parsed.sqlite_path(), synchronous=synchronous)

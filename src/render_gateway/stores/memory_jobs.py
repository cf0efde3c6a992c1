"""``memory://`` job store: one process's dicts and a LaneQueue, for in-process tests.

Nothing survives the process, so it has no place in a gateway that accepts jobs for real. Every
operation runs on the event loop without awaiting anything in between, so each is atomic the
way a shared store's single script is. Requests and extra fields are kept as the JSON they
would be stored as elsewhere, so callers see the same values from every implementation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import Any

import orjson

from render_gateway.core.jobs import Job, JobError, JobStatus, route_key
from render_gateway.core.lanes import Lane, LaneQueue
from render_gateway.core.usage_records import UsageRecord
from render_gateway.stores.jobs import (
    CancelResult,
    IdempotencyConflict,
    JobFilter,
    LaneSnapshot,
    Opened,
    QueueFull,
    QueueSnapshot,
    check_finish,
    merge_patch,
)
from render_gateway.stores.memory_usage_log import MemoryUsageStream


def _as_stored(value: Any) -> Any:
    """The value after a round trip through JSON (a copy: callers cannot change what is held)."""
    return orjson.loads(orjson.dumps(value))


class MemoryJobStore:
    def __init__(self) -> None:
        self.usage_log = MemoryUsageStream()
        self._jobs: dict[str, Job] = {}
        self._seq: dict[str, int] = {}  # admission order: unsettled and expiry lists follow it
        self._by_key: dict[tuple[str, str], str] = {}  # (customer, idempotency key) -> job id
        self._queue = LaneQueue()
        self._routes: dict[str, str] = {}  # queued job id -> route key
        self._queued_per_customer: Counter[str] = Counter()
        self._leases: dict[str, tuple[str, float]] = {}  # running job id -> (holder, until)
        self._unfollowed: dict[str, float] = {}  # ended job id -> when, until followed up
        self._next_seq = 0

    async def open(self) -> Opened:
        return Opened((), 0)

    async def close(self) -> None:
        return None

    def _copy(self, job_id: str) -> Job:
        job = self._jobs[job_id]
        lease = self._leases.get(job_id) if job.status is JobStatus.running else None
        return job.evolve(
            request=_as_stored(job.request),
            extra=_as_stored(job.extra),
            run_holder=lease[0] if lease is not None else None,
        )

    def _enqueue(self, job: Job, *, put_back: bool) -> None:
        if not (put_back and self._queue.put_back(job.id)):
            self._queue.push(job.id, job.lane)
        self._routes[job.id] = route_key(job.request)
        self._queued_per_customer[job.customer_id] += 1

    def _leave_queue(self, job: Job, *, to_run: bool) -> None:
        if to_run:
            self._queue.take(job.id)
        else:
            self._queue.remove(job.id)
        del self._routes[job.id]
        self._queued_per_customer[job.customer_id] -= 1
        if not self._queued_per_customer[job.customer_id]:
            del self._queued_per_customer[job.customer_id]

    async def submit(
        self, job: Job, *, max_queued_for_customer: int, max_queued_total: int
    ) -> tuple[Job, bool]:
        if job.status is not JobStatus.queued:
            raise ValueError("a new job must be queued")
        route_key(job.request)  # a job the queue could not route is refused before it is stored
        if job.idempotency_key is not None:
            existing_id = self._by_key.get((job.customer_id, job.idempotency_key))
            if existing_id is not None:
                existing = self._copy(existing_id)
                if existing.request_digest != job.request_digest:
                    raise IdempotencyConflict(existing)
                return existing, False
        if self._queued_per_customer.get(job.customer_id, 0) >= max_queued_for_customer:
            raise QueueFull("customer", max_queued_for_customer)
        if len(self._queue) >= max_queued_total:
            raise QueueFull("total", max_queued_total)
        stored = job.evolve(request=_as_stored(job.request), extra=_as_stored(job.extra))
        self._jobs[job.id] = stored
        self._seq[job.id] = self._next_seq
        self._next_seq += 1
        if job.idempotency_key is not None:
            self._by_key[(job.customer_id, job.idempotency_key)] = job.id
        self._enqueue(stored, put_back=False)
        return self._copy(job.id), True

    async def get(self, job_id: str) -> Job | None:
        return self._copy(job_id) if job_id in self._jobs else None

    async def position(self, job_id: str) -> int | None:
        return self._queue.position(job_id)

    async def depth(self) -> dict[str, int]:
        return {lane.name: self._queue.depth(lane) for lane in Lane}

    async def queued_for(self, customer_id: str) -> int:
        return self._queued_per_customer.get(customer_id, 0)

    async def claim(
        self,
        now: float,
        *,
        runnable: frozenset[str],
        served: frozenset[str],
        holder: str,
        lease_seconds: float,
    ) -> Job | None:
        head = self._queue.peek()
        if head is None:
            return None
        route = self._routes[head]
        if route not in runnable and route in served:
            return None  # head of line: it waits for its own route; nothing overtakes it
        job = self._jobs[head]
        self._leave_queue(job, to_run=True)
        self._jobs[head] = job.evolve(status=JobStatus.running, started_at=now)
        self._leases[head] = (holder, now + lease_seconds)
        return self._copy(head)

    async def heartbeat(
        self, job_ids: Collection[str], holder: str, now: float, lease_seconds: float
    ) -> set[str]:
        held = set()
        for job_id in job_ids:
            lease = self._leases.get(job_id)
            if lease is not None and lease[0] == holder and lease[1] >= now:
                self._leases[job_id] = (holder, now + lease_seconds)
                held.add(job_id)
        return held

    async def expired_runs(self, now: float) -> list[Job]:
        lapsed = [job_id for job_id, (_, until) in self._leases.items() if until < now]
        return [self._copy(job_id) for job_id in sorted(lapsed, key=self._seq.__getitem__)]

    async def request_cancel(self, job_id: str, customer_id: str) -> CancelResult:
        job = self._jobs.get(job_id)
        if job is None or job.customer_id != customer_id:
            return CancelResult.not_found
        if job.status.terminal:
            return CancelResult.terminal
        self._jobs[job_id] = job.evolve(cancel_requested=True)
        return CancelResult.queued if job.status is JobStatus.queued else CancelResult.running

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
        check_finish(status, expect)
        job = self._jobs[job_id]  # KeyError for an unknown id
        if job.status not in expect:
            return None  # settled, claimed or requeued by another path first
        if not self._held_by(job, holder):
            return None  # a late result of a run that another holder took over
        if usage is not None:
            # The memory stream's append never suspends, so nothing runs between it and the
            # change below; if it refuses the record, the job is left as it was.
            await self.usage_log.append_usage(usage)
        if job.status is JobStatus.queued:
            self._leave_queue(job, to_run=False)
        else:
            self._queue.drop(job_id)
            self._leases.pop(job_id, None)
        self._unfollowed[job_id] = now
        self._jobs[job_id] = job.evolve(
            status=status,
            completed_at=now,
            outputs=tuple(outputs),
            error=error,
            seed=job.seed if seed is None else seed,
            extra=merge_patch(job.extra, _as_stored(extra or {})),
        )
        return self._copy(job_id)

    async def unfollowed(self, ended_before: float, limit: int) -> list[Job]:
        ended = sorted((at, job_id) for job_id, at in self._unfollowed.items() if at < ended_before)
        return [self._copy(job_id) for _, job_id in ended[:limit]]

    async def followed_up(self, job_id: str) -> None:
        self._unfollowed.pop(job_id, None)

    def _held_by(self, job: Job, holder: str | None) -> bool:
        """The fence of a run's own end: no holder given, or the running job's lease is its."""
        if holder is None or job.status is not JobStatus.running:
            return True
        lease = self._leases.get(job.id)
        return lease is not None and lease[0] == holder

    async def requeue(
        self,
        job_id: str,
        *,
        extra: dict[str, Any] | None = None,
        count_retry: bool,
        holder: str | None = None,
    ) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or job.status is not JobStatus.running or not self._held_by(job, holder):
            return None
        self._leases.pop(job_id, None)
        requeued = job.evolve(
            status=JobStatus.queued,
            started_at=None,
            retries=job.retries + int(count_retry),
            extra=merge_patch(job.extra, _as_stored(extra or {})),
        )
        self._jobs[job_id] = requeued
        self._enqueue(requeued, put_back=True)
        return self._copy(job_id)

    async def unsettled(self) -> list[Job]:
        ids = [j.id for j in self._jobs.values() if not j.status.terminal]
        return [self._copy(job_id) for job_id in sorted(ids, key=self._seq.__getitem__)]

    async def listed(
        self, where: JobFilter, *, after: str | None, limit: int, newest_first: bool
    ) -> list[Job]:
        # A scan, as expired_queued: this store holds what one test queues.
        scope = sorted(
            (j.id for j in self._jobs.values() if where.in_scope(j)),
            key=self._seq.__getitem__,
            reverse=newest_first,
        )
        start = 0
        if after is not None:
            if after not in scope:
                raise KeyError(after)
            start = scope.index(after) + 1
        page = [job_id for job_id in scope[start:] if where.matches(self._jobs[job_id])]
        return [self._copy(job_id) for job_id in page[: max(limit, 0)]]

    async def queue_snapshot(self) -> QueueSnapshot:
        lanes = {}
        for lane in Lane:
            head = self._queue.head(lane)
            oldest = None if head is None else self._jobs[head].created_at
            lanes[lane.name] = LaneSnapshot(self._queue.depth(lane), oldest)
        return QueueSnapshot(lanes, len(self._leases))

    async def expired_queued(self, now: float) -> list[str]:
        # A scan: this store holds what one test queues, not a production backlog.
        ids = [
            j.id
            for j in self._jobs.values()
            if j.status is JobStatus.queued and j.expires_at is not None and j.expires_at <= now
        ]
        return sorted(ids, key=self._seq.__getitem__)

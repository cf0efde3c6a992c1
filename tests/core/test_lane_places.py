"""A job taken out of the LaneQueue to run keeps its place: put back, it runs before every job
queued after it, however far the lane's storage has moved on meanwhile."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from render_gateway.core.lanes import Lane, LaneQueue, RankIndex


def test_a_taken_job_put_back_runs_before_the_jobs_after_it() -> None:
    queue = LaneQueue()
    for job_id in ("a", "b", "c"):
        queue.push(job_id, Lane.normal)
    assert queue.take("a") and queue.position("a") is None and queue.is_taken("a")
    queue.push("d", Lane.normal)
    queue.push("h", Lane.high)
    assert queue.put_back("a") and not queue.is_taken("a")
    assert queue.ids_in_order() == ["h", "a", "b", "c", "d"]
    assert [queue.position(j) for j in ("h", "a", "b", "c", "d")] == [0, 1, 2, 3, 4]


def test_take_put_back_and_drop_only_apply_where_they_fit() -> None:
    queue = LaneQueue()
    queue.push("a", Lane.low)
    assert not queue.put_back("a")  # queued, not taken
    assert not queue.drop("a")
    assert not queue.take("missing")
    assert queue.take("a")
    assert not queue.take("a")
    assert not queue.remove("a")  # a taken job is not in the queue
    with pytest.raises(ValueError, match="taken"):
        queue.push("a", Lane.low)
    assert queue.drop("a")
    assert not queue.put_back("a")  # its place is forgotten
    queue.push("a", Lane.low)  # and it may be queued afresh
    assert queue.position("a") == 0


def test_a_slot_older_than_the_storage_comes_back_in_order() -> None:
    # The one old slot is discarded, then the lane moves on far enough that the storage is
    # rebased past it more than once; inserting it again must lay the storage out from it.
    index = RankIndex()
    old = index.append()
    index.discard(old)
    slots = [index.append() for _ in range(100)]
    for slot in slots[:90]:
        index.discard(slot)
    index.insert(old)
    assert index.first() == old and len(index) == 11
    assert [index.rank(s) for s in (old, *slots[90:])] == list(range(11))


def test_insert_refuses_slots_never_appended_or_still_present() -> None:
    index = RankIndex()
    slot = index.append()
    with pytest.raises(ValueError, match="present"):
        index.insert(slot)
    with pytest.raises(ValueError, match="never"):
        index.insert(slot + 1)
    with pytest.raises(ValueError, match="never"):
        index.insert(-1)


class PlacesMachine(RuleBasedStateMachine):
    """Against a model: per lane, the ids in admission order, and which of them are queued."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = LaneQueue()
        self.admitted: dict[Lane, list[str]] = {lane: [] for lane in Lane}
        self.queued: set[str] = set()
        self.taken: set[str] = set()
        self.counter = 0

    def _order(self) -> list[str]:
        return [j for lane in Lane for j in self.admitted[lane] if j in self.queued]

    @rule(lane=st.sampled_from(Lane), count=st.integers(1, 30))
    def push(self, lane: Lane, count: int) -> None:
        for _ in range(count):  # bursts carry the storage through doublings and rebases
            self.counter += 1
            job_id = f"job-{self.counter}"
            self.queue.push(job_id, lane)
            self.admitted[lane].append(job_id)
            self.queued.add(job_id)

    @precondition(lambda self: self.queued)
    @rule(data=st.data())
    def take(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.queued)))
        assert self.queue.take(job_id)
        self.queued.remove(job_id)
        self.taken.add(job_id)

    @rule(times=st.integers(1, 20))
    def take_heads(self, times: int) -> None:
        for _ in range(times):
            order = self._order()
            head = self.queue.peek()
            assert head == (order[0] if order else None)
            if head is None:
                return
            assert self.queue.take(head)
            self.queued.remove(head)
            self.taken.add(head)

    @precondition(lambda self: self.taken)
    @rule(data=st.data())
    def put_back(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.taken)))
        assert self.queue.put_back(job_id)
        self.taken.remove(job_id)
        self.queued.add(job_id)

    @precondition(lambda self: self.taken)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.taken)))
        assert self.queue.drop(job_id)
        self.taken.remove(job_id)
        for ids in self.admitted.values():
            if job_id in ids:
                ids.remove(job_id)

    @precondition(lambda self: self.queued)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.queued)))
        assert self.queue.remove(job_id)
        self.queued.remove(job_id)
        for ids in self.admitted.values():
            if job_id in ids:
                ids.remove(job_id)

    @invariant()
    def agrees_with_the_model(self) -> None:
        order = self._order()
        assert self.queue.ids_in_order() == order
        assert [self.queue.position(j) for j in order] == list(range(len(order)))
        assert [self.queue.depth(lane) for lane in Lane] == [
            sum(j in self.queued for j in self.admitted[lane]) for lane in Lane
        ]
        assert all(self.queue.position(j) is None and self.queue.is_taken(j) for j in self.taken)


PlacesMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
test_places_against_a_model = PlacesMachine.TestCase

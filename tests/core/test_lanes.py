"""Priority lanes: strict priority, FIFO, exact positions, the rank index, and model checks."""

from __future__ import annotations

import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from render_gateway.core.lanes import Lane, LaneQueue, RankIndex

HIGH, NORMAL, LOW = Lane.high, Lane.normal, Lane.low


def _queue(*jobs: tuple[str, Lane]) -> LaneQueue:
    queue = LaneQueue()
    for job_id, lane in jobs:
        queue.push(job_id, lane)
    return queue


def _drain(queue: LaneQueue) -> list[str]:
    popped = []
    while (job_id := queue.pop()) is not None:
        popped.append(job_id)
    return popped


# ------------------------------------------------------------------------------------ Lane


def test_lane_parse_takes_each_name() -> None:
    assert [Lane.parse(name) for name in ("high", "normal", "low")] == [HIGH, NORMAL, LOW]


@pytest.mark.parametrize("name", ["urgent", "HIGH", " high", "", "0"])
def test_lane_parse_refuses_other_names_and_lists_the_valid_ones(name: str) -> None:
    with pytest.raises(ValueError, match="high, normal, low"):
        Lane.parse(name)


def test_lanes_order_by_priority() -> None:
    assert sorted([LOW, HIGH, NORMAL]) == [HIGH, NORMAL, LOW]


# ------------------------------------------------------------------------------- LaneQueue


def test_strict_priority_across_lanes() -> None:
    queue = _queue(("l1", LOW), ("n1", NORMAL), ("h1", HIGH), ("l2", LOW), ("h2", HIGH))
    assert queue.ids_in_order() == ["h1", "h2", "n1", "l1", "l2"]
    assert [queue.position(j) for j in ("h1", "h2", "n1", "l1", "l2")] == [0, 1, 2, 3, 4]
    assert _drain(queue) == ["h1", "h2", "n1", "l1", "l2"]


def test_a_later_high_job_overtakes_queued_lower_ones() -> None:
    queue = _queue(("n1", NORMAL), ("l1", LOW))
    assert queue.position("l1") == 1
    queue.push("h1", HIGH)
    assert queue.peek() == "h1"
    assert (queue.position("n1"), queue.position("l1")) == (1, 2)


def test_fifo_inside_a_lane() -> None:
    ids = [f"job-{i}" for i in range(50)]
    queue = _queue(*((job_id, NORMAL) for job_id in ids))
    assert [queue.position(job_id) for job_id in ids] == list(range(50))
    assert _drain(queue) == ids


def test_positions_after_removals_in_the_middle() -> None:
    queue = _queue(
        ("h1", HIGH), ("h2", HIGH), ("h3", HIGH), ("n1", NORMAL), ("n2", NORMAL), ("l1", LOW)
    )
    assert queue.remove("h2")
    assert queue.remove("n1")
    assert [queue.position(j) for j in ("h1", "h3", "n2", "l1")] == [0, 1, 2, 3]
    assert queue.position("h2") is None
    assert queue.position("n1") is None
    assert queue.remove("h1")
    assert queue.position("h3") == 0
    assert queue.position("l1") == 2


def test_removing_the_head_moves_the_next_job_up() -> None:
    queue = _queue(("a", LOW), ("b", LOW))
    assert queue.remove("a")
    assert queue.peek() == "b"
    assert queue.position("b") == 0


def test_pop_and_peek_on_an_empty_queue_return_none() -> None:
    queue = LaneQueue()
    assert queue.pop() is None
    assert queue.peek() is None
    queue.push("a", NORMAL)
    assert queue.pop() == "a"
    assert queue.pop() is None
    assert len(queue) == 0


def test_duplicate_push_raises_even_into_another_lane() -> None:
    queue = _queue(("a", NORMAL))
    with pytest.raises(ValueError, match="already queued"):
        queue.push("a", NORMAL)
    with pytest.raises(ValueError, match="already queued"):
        queue.push("a", HIGH)
    assert (len(queue), queue.depth(HIGH), queue.position("a")) == (1, 0, 0)


def test_an_id_may_be_queued_again_once_it_has_left() -> None:
    queue = _queue(("a", NORMAL), ("b", NORMAL))
    assert queue.remove("a")
    queue.push("a", NORMAL)
    assert queue.ids_in_order() == ["b", "a"]


def test_remove_of_an_unknown_or_already_removed_id_returns_false() -> None:
    queue = _queue(("a", HIGH))
    assert not queue.remove("nope")
    assert queue.remove("a")
    assert not queue.remove("a")
    assert queue.pop() is None


def test_depth_len_and_contains() -> None:
    queue = _queue(("h", HIGH), ("n1", NORMAL), ("n2", NORMAL))
    assert [queue.depth(lane) for lane in Lane] == [1, 2, 0]
    assert len(queue) == 3
    assert "n2" in queue
    assert "x" not in queue


# ------------------------------------------------------------------------------- RankIndex


def test_rank_index_append_hands_out_increasing_slots() -> None:
    index = RankIndex()
    assert [index.append() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert len(index) == 5
    assert [index.rank(slot) for slot in range(5)] == [0, 1, 2, 3, 4]
    assert index.first() == 0


def test_rank_index_empty() -> None:
    index = RankIndex()
    assert len(index) == 0
    assert index.first() is None
    assert 0 not in index
    assert not index.discard(0)
    with pytest.raises(KeyError):
        index.rank(0)


def test_rank_index_discard_twice_and_out_of_range() -> None:
    index = RankIndex()
    slots = [index.append() for _ in range(3)]
    assert index.discard(slots[1])
    assert not index.discard(slots[1])
    assert not index.discard(-1)
    assert not index.discard(3)
    assert slots[1] not in index
    with pytest.raises(KeyError):
        index.rank(slots[1])
    assert index.rank(slots[2]) == 1


def test_rank_index_grows_past_several_doublings() -> None:
    index = RankIndex()
    start = index.capacity
    slots = [index.append() for _ in range(1000)]
    assert index.capacity >= 1000
    assert index.capacity >= start * 2**6
    # Holes everywhere, then every rank checked against a plain count.
    for slot in slots[::3]:
        assert index.discard(slot)
    live = [slot for slot in slots if slot % 3 != 0]
    assert len(index) == len(live)
    assert [index.rank(slot) for slot in live] == list(range(len(live)))
    assert index.first() == 1


def test_rank_index_rebase_keeps_absolute_slots_and_shrinks_storage() -> None:
    index = RankIndex()
    slots = [index.append() for _ in range(10_000)]
    grown = index.capacity
    for slot in slots[:9_990]:
        assert index.discard(slot)
    assert index.capacity < grown
    assert index.capacity <= 64  # proportional to the 10 live slots, not to 10,000
    assert len(index) == 10
    assert index.first() == 9_990
    assert [index.rank(slot) for slot in slots[9_990:]] == list(range(10))
    assert 9_989 not in index
    assert 9_995 in index
    assert not index.discard(5)
    # Appending after the rebase continues the absolute numbering.
    assert index.append() == 10_000
    assert index.rank(10_000) == 10


def test_rank_index_first_skips_holes_after_rebases() -> None:
    index = RankIndex()
    slots = [index.append() for _ in range(300)]
    for slot in slots[:200]:
        index.discard(slot)
    for slot in slots[200:290:2]:
        index.discard(slot)
    assert index.first() == 201
    assert index.rank(299) == len(index) - 1


def test_rank_index_drained_returns_to_the_smallest_storage() -> None:
    index = RankIndex()
    smallest = index.capacity
    slots = [index.append() for _ in range(500)]
    for slot in slots:
        index.discard(slot)
    assert (len(index), index.first(), index.capacity) == (0, None, smallest)
    assert index.append() == 500
    assert index.first() == 500


def test_rank_index_that_drains_and_refills_often() -> None:
    # A lane that keeps emptying: the smallest storage is reused, the numbering carries on.
    index = RankIndex()
    expected = 0
    for burst in [1] * 20 + [2, 3, 5, 8, 13, 1, 1, 7] * 4:
        slots = [index.append() for _ in range(burst)]
        assert slots == list(range(expected, expected + burst))
        expected += burst
        assert [index.rank(slot) for slot in slots] == list(range(burst))
        for slot in slots:
            assert index.first() == slot
            assert index.discard(slot)
        assert (len(index), index.first()) == (0, None)


def test_rank_index_random_discards_against_a_sorted_list() -> None:
    rng = random.Random(7)
    index = RankIndex()
    live: list[int] = []
    for _ in range(5_000):
        if live and rng.random() < 0.45:
            # Mostly from the front, as dispatch does, so rebases happen too.
            slot = live.pop(0 if rng.random() < 0.7 else rng.randrange(len(live)))
            assert index.discard(slot)
        else:
            live.append(index.append())
        assert len(index) == len(live)
        assert index.first() == (live[0] if live else None)
    assert [index.rank(slot) for slot in live] == list(range(len(live)))
    assert index.capacity <= max(64, 8 * (index.append() - live[0]))


# ----------------------------------------------------------------------- model-based checks


class LaneQueueMachine(RuleBasedStateMachine):
    """Random pushes, removals and pops against three plain lists."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = LaneQueue()
        self.model: dict[Lane, list[str]] = {lane: [] for lane in Lane}
        self.counter = 0

    def _new_id(self) -> str:
        self.counter += 1
        return f"job-{self.counter}"

    def _order(self) -> list[str]:
        return [job_id for lane in Lane for job_id in self.model[lane]]

    @rule(lane=st.sampled_from(Lane))
    def push(self, lane: Lane) -> None:
        job_id = self._new_id()
        self.queue.push(job_id, lane)
        self.model[lane].append(job_id)

    @rule(lane=st.sampled_from(Lane), count=st.integers(1, 40))
    def push_many(self, lane: Lane, count: int) -> None:
        # Bursts carry a lane's storage through several doublings within a short run.
        for _ in range(count):
            self.push(lane)

    @precondition(lambda self: len(self.queue) > 0)
    @rule(data=st.data())
    def remove_queued(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self._order()))
        assert self.queue.remove(job_id)
        for ids in self.model.values():
            if job_id in ids:
                ids.remove(job_id)

    @precondition(lambda self: len(self.queue) > 0)
    @rule(data=st.data())
    def push_duplicate(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self._order()))
        before = self.queue.ids_in_order()
        with pytest.raises(ValueError):
            self.queue.push(job_id, data.draw(st.sampled_from(Lane)))
        assert self.queue.ids_in_order() == before

    @rule(data=st.data())
    def remove_unknown(self, data: st.DataObject) -> None:
        # Either never pushed, or pushed and gone already.
        number = data.draw(st.integers(1, self.counter + 5))
        job_id = f"job-{number}"
        if job_id not in self._order():
            assert not self.queue.remove(job_id)

    @rule(times=st.integers(1, 25))
    def pop(self, times: int) -> None:
        for _ in range(times):
            expected = next((ids.pop(0) for ids in self.model.values() if ids), None)
            assert self.queue.pop() == expected

    @invariant()
    def agrees_with_the_model(self) -> None:
        order = self._order()
        assert len(self.queue) == len(order)
        assert [self.queue.depth(lane) for lane in Lane] == [
            len(ids) for ids in self.model.values()
        ]
        assert self.queue.peek() == (order[0] if order else None)
        assert [self.queue.position(job_id) for job_id in order] == list(range(len(order)))
        assert self.queue.ids_in_order() == order
        assert self.queue.position(f"job-{self.counter + 1}") is None


LaneQueueMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None
)
test_lane_queue_against_a_model = LaneQueueMachine.TestCase


class RankIndexMachine(RuleBasedStateMachine):
    """Appends and discards (front-heavy, like dispatch) against a sorted list."""

    def __init__(self) -> None:
        super().__init__()
        self.index = RankIndex()
        self.live: list[int] = []
        self.appended = 0

    @rule(count=st.integers(1, 30))
    def append(self, count: int) -> None:
        for _ in range(count):
            assert self.index.append() == self.appended
            self.live.append(self.appended)
            self.appended += 1

    @precondition(lambda self: len(self.live) > 0)
    @rule(count=st.integers(1, 30))
    def discard_front(self, count: int) -> None:
        for slot in self.live[:count]:
            assert self.index.discard(slot)
        del self.live[:count]

    @precondition(lambda self: len(self.live) > 0)
    @rule(data=st.data())
    def discard_any(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(self.live))
        assert self.index.discard(slot)
        self.live.remove(slot)

    @rule(slot=st.integers(-3, 300))
    def discard_absent(self, slot: int) -> None:
        if slot not in self.live:
            assert not self.index.discard(slot)

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert len(self.index) == len(self.live)
        assert self.index.first() == (self.live[0] if self.live else None)
        assert [self.index.rank(slot) for slot in self.live] == list(range(len(self.live)))
        # A spot check of membership over the whole range handed out so far.
        assert [s for s in range(-1, self.appended + 1) if s in self.index] == self.live
        # Storage within a constant factor of newest slot - oldest live slot, however many
        # slots were appended before.
        span = self.appended - self.live[0] if self.live else 0
        assert self.index.capacity <= max(16, 8 * span)


RankIndexMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None
)
test_rank_index_against_a_model = RankIndexMachine.TestCase

"""Priority lanes for the job queue, with an exact queue position in O(log n).

Three lanes run in strict priority (every ``high`` job before any ``normal``, every ``normal``
before any ``low``) and first in, first out inside a lane. Jobs leave from the head (dispatch)
or from anywhere (cancel, TTL expiry), and a job taken out to run may come back to its own
place (a run interrupted: it keeps its turn ahead of the jobs that came after it). A job's
position is polled often, so it may not scan the queue: each lane numbers its jobs with
increasing slots and keeps the live slots in a Fenwick tree, and a position is the sizes of the
lanes ahead plus a prefix count.
"""

from __future__ import annotations

from enum import IntEnum

# Small enough that tests cross several doublings and rebases with a few dozen slots.
_MIN_CAPACITY = 8


class Lane(IntEnum):
    high = 0
    normal = 1
    low = 2

    @classmethod
    def parse(cls, name: str) -> Lane:
        lane = cls.__members__.get(name)
        if lane is None:
            valid = ", ".join(cls.__members__)
            raise ValueError(f"unknown lane {name!r}; valid lanes are: {valid}")
        return lane


def _capacity_for(span: int) -> int:
    """A power of two with room for ``span`` slots and as many again to append into."""
    # A power of two lets first() descend from the root in log2(capacity) halvings.
    capacity = _MIN_CAPACITY
    while capacity < 2 * span:
        capacity *= 2
    return capacity


class RankIndex:
    """An order-statistic set of integer slots handed out in increasing order by ``append``.

    Slot ``s`` is stored at 1-based tree index ``s - base + 1``, so absolute slot numbers stay
    valid when the storage is rebuilt over a new ``base``. ``rank``, ``discard`` and ``first``
    are O(log n); ``append`` is amortised O(1); ``insert`` (a discarded slot made present
    again) is O(log n), or O(span) when the slot is older than the storage's base. Memory is
    proportional to the slots from the oldest live one to the newest, not to how many were ever
    appended.
    """

    def __init__(self) -> None:
        self._base = 0  # absolute slot held at tree index 1
        self._next = 0  # absolute slot the next append gets
        self._count = 0
        self._present = bytearray(_MIN_CAPACITY)  # 0/1 per slot: O(1) membership
        self._tree = [0] * (_MIN_CAPACITY + 1)  # Fenwick tree over _present; index 0 unused

    @property
    def capacity(self) -> int:
        """Slots the storage holds now (read-only; tests use it to see a rebase shrink it)."""
        return len(self._present)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, slot: object) -> bool:
        if not isinstance(slot, int):
            return False
        offset = slot - self._base
        return 0 <= offset < self._next - self._base and self._present[offset] == 1

    def append(self) -> int:
        if self._next - self._base == len(self._present):
            self._rebuild(self._live_start())
        slot = self._next
        self._next += 1
        self._present[slot - self._base] = 1
        self._add(slot - self._base + 1, 1)
        self._count += 1
        return slot

    def insert(self, slot: int) -> None:
        """Make ``slot``, handed out by ``append`` and discarded since, present again."""
        if not 0 <= slot < self._next:
            raise ValueError(f"slot {slot} was never appended")
        if slot in self:
            raise ValueError(f"slot {slot} is present already")
        if slot < self._base:  # rebased past it meanwhile: lay the storage out from it again
            self._rebuild(slot)
        self._present[slot - self._base] = 1
        self._add(slot - self._base + 1, 1)
        self._count += 1

    def discard(self, slot: int) -> bool:
        if slot not in self:
            return False
        self._present[slot - self._base] = 0
        self._add(slot - self._base + 1, -1)
        self._count -= 1
        live_start = self._live_start()
        # Rebuild once the dead prefix is more than half of the slots in use: the O(live) rebuild
        # is paid for by the more-than-live slots it drops for good, and capacity stays within
        # a small factor of the live range (newest slot - oldest live slot).
        dead = live_start - self._base
        if 2 * dead > self._next - self._base:
            self._rebuild(live_start)
        return True

    def rank(self, slot: int) -> int:
        """How many present slots are smaller than ``slot``, which must be present."""
        if slot not in self:
            raise KeyError(slot)
        return self._prefix(slot - self._base)

    def first(self) -> int | None:
        """The smallest present slot, or None when empty."""
        if self._count == 0:
            return None
        # Fenwick descent: the largest index whose prefix count is 0, plus one.
        tree = self._tree
        index = 0
        step = len(self._present)
        while step:
            probe = index + step
            if tree[probe] == 0:  # capacity is a power of two, so probe never overshoots
                index = probe
            step >>= 1
        return self._base + index

    def _live_start(self) -> int:
        first = self.first()
        return self._next if first is None else first

    def _prefix(self, index: int) -> int:
        """Present slots at tree indices 1..index."""
        tree = self._tree
        total = 0
        while index > 0:
            total += tree[index]
            index &= index - 1
        return total

    def _add(self, index: int, delta: int) -> None:
        tree = self._tree
        size = len(tree)
        while index < size:
            tree[index] += delta
            index += index & -index

    def _rebuild(self, new_base: int) -> None:
        """Lay the slots from ``new_base`` to the newest out afresh, in O(capacity).
        ``new_base`` may lie below the current base (``insert`` of an old slot)."""
        span = self._next - new_base
        if self._count == 0 and len(self._present) == _MIN_CAPACITY and span <= _MIN_CAPACITY:
            # Emptied at the smallest size (a lane that drains often): every count is already 0.
            self._base = new_base
            return
        start, end = new_base - self._base, self._next - self._base
        # Slots below the old base (start < 0) are all absent.
        live = self._present[start:end] if start >= 0 else bytearray(-start) + self._present[:end]
        capacity = _capacity_for(len(live))
        present = live + bytearray(capacity - len(live))
        # Linear-time Fenwick build: each node pushes its total up to its parent once.
        tree = [0, *present]
        for index in range(1, capacity + 1):
            parent = index + (index & -index)
            if parent <= capacity:
                tree[parent] += tree[index]
        self._base, self._present, self._tree = new_base, present, tree


class LaneQueue:
    """Job ids queued in three strict-priority lanes, FIFO inside each lane.

    A job leaves for good with ``remove``, or with ``take`` when it starts to run: a taken job
    keeps its slot, so ``put_back`` returns it to its own place in its lane (or ``drop``
    forgets the slot once the run has ended for good).
    """

    def __init__(self) -> None:
        self._indexes = tuple(RankIndex() for _ in Lane)
        self._where: dict[str, tuple[Lane, int]] = {}
        self._taken: dict[str, tuple[Lane, int]] = {}  # running jobs: the place to come back to
        # Per lane, slot -> job id (in no particular order once a job has been put back).
        self._ids: tuple[dict[int, str], ...] = tuple({} for _ in Lane)

    def push(self, job_id: str, lane: Lane) -> None:
        if job_id in self._where:
            raise ValueError(f"job {job_id!r} is already queued")
        if job_id in self._taken:
            raise ValueError(f"job {job_id!r} is taken: put it back to its own place")
        lane = Lane(lane)
        slot = self._indexes[lane].append()
        self._where[job_id] = (lane, slot)
        self._ids[lane][slot] = job_id

    def remove(self, job_id: str) -> bool:
        """Take a job out from anywhere in the queue (cancel, expiry); False if not queued."""
        entry = self._where.pop(job_id, None)
        if entry is None:
            return False
        lane, slot = entry
        self._indexes[lane].discard(slot)
        del self._ids[lane][slot]
        return True

    def take(self, job_id: str) -> bool:
        """Take a queued job out to run, keeping its place for ``put_back``; False if not
        queued."""
        entry = self._where.pop(job_id, None)
        if entry is None:
            return False
        lane, slot = entry
        self._indexes[lane].discard(slot)
        del self._ids[lane][slot]
        self._taken[job_id] = entry
        return True

    def put_back(self, job_id: str) -> bool:
        """A taken job back at its own place in its lane; False if it is not taken."""
        entry = self._taken.pop(job_id, None)
        if entry is None:
            return False
        lane, slot = entry
        self._indexes[lane].insert(slot)
        self._ids[lane][slot] = job_id
        self._where[job_id] = entry
        return True

    def drop(self, job_id: str) -> bool:
        """Forget a taken job's place (its run ended for good); False if it is not taken."""
        return self._taken.pop(job_id, None) is not None

    def is_taken(self, job_id: str) -> bool:
        return job_id in self._taken

    def position(self, job_id: str) -> int | None:
        """How many queued jobs run before this one (0: next to run); None if not queued."""
        entry = self._where.get(job_id)
        if entry is None:
            return None
        lane, slot = entry
        ahead = sum(len(index) for index in self._indexes[:lane])
        return ahead + self._indexes[lane].rank(slot)

    def peek(self) -> str | None:
        for lane in Lane:
            head = self.head(lane)
            if head is not None:
                return head
        return None

    def head(self, lane: Lane) -> str | None:
        """The job of ``lane`` that runs first among that lane's (None when it is empty)."""
        slot = self._indexes[lane].first()
        return None if slot is None else self._ids[lane][slot]

    def pop(self) -> str | None:
        job_id = self.peek()
        if job_id is not None:
            self.remove(job_id)
        return job_id

    def depth(self, lane: Lane) -> int:
        return len(self._indexes[lane])

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._where

    def ids_in_order(self) -> list[str]:
        """Every queued id in run order, O(n log n): for tests and for rebuilding a queue."""
        return [ids[slot] for ids in self._ids for slot in sorted(ids)]

"""What exists at start is kept out of the collector's passes; what comes later is not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from render_gateway.startup_heap import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector can free it


@pytest.fixture
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the suite runs with a normal heap


def _walked(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_start_up_objects_are_frozen_and_garbage_is_collected_first(thawed: None) -> None:
    built_at_start = [Node() for _ in range(100)]
    start_up_garbage = weakref.ref(Node())  # a cycle nobody holds
    frozen = freeze_startup_heap()
    assert start_up_garbage() is None  # collected, not frozen for good
    assert frozen >= 100
    assert not _walked(built_at_start[0])  # no full pass walks it again
    made_later = Node()
    assert _walked(made_later)  # later objects are collected as before
    garbage = Node()
    del garbage
    assert gc.collect() >= 1  # a cycle made after the freeze is still freed

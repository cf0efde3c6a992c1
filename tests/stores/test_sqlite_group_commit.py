"""The group-commit writer on a real SQLite file: what its event-loop callers are promised
(one commit for many, after-commit steps before the awaiter resumes, a failing operation
rolls back alone, a failed commit fails everyone in it, a cancelled caller's operation is not
run, or, once running, still commits and still runs its after-commit step)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from render_gateway.stores.sqlite_group_commit import GroupCommitWriter


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, parent INTEGER "
        "REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[GroupCommitWriter]:
    started = GroupCommitWriter(tmp_path / "db.sqlite", "FULL", 512, "test-writer", migrate)
    started.start()
    started.ready.result(10)
    yield started
    started.stop()


def rows(writer: GroupCommitWriter) -> list[int]:
    with sqlite3.connect(writer._path) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM item ORDER BY id")]


def insert(item: int) -> Callable[[sqlite3.Connection], int]:
    def operation(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO item (id) VALUES (?)", (item,))
        return item

    return operation


async def test_concurrent_callers_share_commits_and_see_their_step_first(
    writer: GroupCommitWriter,
) -> None:
    mirror: list[int] = []

    async def one(item: int) -> None:
        result = await writer.execute(insert(item), mirror.append)
        assert result == item and item in mirror  # its step ran before it resumed

    await asyncio.gather(*(one(i) for i in range(300)))
    assert sorted(mirror) == list(range(300)) == rows(writer)
    assert writer.commits < 300  # shared: many operations to a commit


async def test_a_failing_operation_rolls_back_alone(writer: GroupCommitWriter) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO item (id) VALUES (1000)")
        raise ValueError("no")

    steps: list[int] = []
    results = await asyncio.gather(
        writer.execute(insert(1), steps.append),
        writer.execute(half_then_fail, steps.append),
        writer.execute(insert(2), steps.append),
        return_exceptions=True,
    )
    assert results[0] == 1 and results[2] == 2 and isinstance(results[1], ValueError)
    assert rows(writer) == [1, 2] and sorted(steps) == [1, 2]


async def test_a_failed_commit_fails_every_caller_of_its_batch(writer: GroupCommitWriter) -> None:
    """A deferred foreign key fails at COMMIT: nothing of the batch is durable, no step runs."""
    running, hold = threading.Event(), threading.Event()

    def wait(conn: sqlite3.Connection) -> None:
        running.set()
        hold.wait(10)

    def orphan(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO item (id, parent) VALUES (50, 999)")

    steps: list[object] = []
    blocker = asyncio.ensure_future(writer.execute(wait))
    assert await asyncio.to_thread(running.wait, 10)  # inside the blocker's batch: the rest queue
    batch = [writer.execute(insert(7), steps.append), writer.execute(orphan, steps.append)]
    futures = [asyncio.ensure_future(call) for call in batch]
    await asyncio.sleep(0.05)
    hold.set()
    await blocker
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
    assert rows(writer) == [] and steps == []
    assert await writer.execute(insert(8)) == 8  # the writer goes on
    assert rows(writer) == [8]


async def test_a_caller_cancelled_while_queued_does_not_run(writer: GroupCommitWriter) -> None:
    running, hold = threading.Event(), threading.Event()

    def wait(conn: sqlite3.Connection) -> None:
        running.set()
        hold.wait(10)

    blocker = asyncio.ensure_future(writer.execute(wait))
    assert await asyncio.to_thread(running.wait, 10)
    queued = asyncio.ensure_future(writer.execute(insert(3)))
    await asyncio.sleep(0.01)
    queued.cancel()
    await asyncio.sleep(0.01)
    hold.set()
    await blocker
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await writer.execute(insert(4)) == 4
    assert rows(writer) == [4]


async def test_a_caller_cancelled_while_running_still_commits_and_steps(
    writer: GroupCommitWriter,
) -> None:
    running, hold = threading.Event(), threading.Event()
    mirror: list[int] = []

    def slow(conn: sqlite3.Connection) -> int:
        running.set()
        hold.wait(10)
        conn.execute("INSERT INTO item (id) VALUES (5)")
        return 5

    call = asyncio.ensure_future(writer.execute(slow, mirror.append))
    assert await asyncio.to_thread(running.wait, 10)
    call.cancel()
    hold.set()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await writer.execute(insert(6)) == 6  # delivered after the cancelled one's batch
    assert mirror == [5] and rows(writer) == [5, 6]


def test_a_thread_caller_still_gets_a_future(writer: GroupCommitWriter) -> None:
    assert writer.submit(insert(9)).result(10) == 9
    assert rows(writer) == [9]

"""The socket-independent parts of ``GET /ws``: the outbox's policy for slow readers, and a
generate message read as POST /queue's body (the end-to-end behaviour is
tests/api/test_ws_e2e.py)."""

from __future__ import annotations

import asyncio

import pytest

from render_gateway.application.refusals import Refused
from render_gateway.application.socket_jobs import Outbox, client_id_of, queue_body_of


async def test_a_full_outbox_drops_progress_never_terminal_messages() -> None:
    outbox = Outbox(limit=3)
    assert outbox.put({"type": "ack"})
    assert outbox.put({"type": "progress", "step": 1}, droppable=True)
    assert outbox.put({"type": "progress", "step": 2}, droppable=True)
    assert not outbox.put({"type": "progress", "step": 3}, droppable=True)  # full: dropped
    assert outbox.put({"type": "complete"})  # never dropped, past the limit too
    assert outbox.put({"type": "error"})
    assert len(outbox) == 5 and outbox.dropped == 1
    got = [(await outbox.get())["type"] for _ in range(5)]
    assert got == ["ack", "progress", "progress", "complete", "error"]


async def test_reading_waits_while_the_outbox_is_full() -> None:
    outbox = Outbox(limit=2)
    outbox.put({"n": 1})
    outbox.put({"n": 2})
    room = asyncio.ensure_future(outbox.room())
    await asyncio.sleep(0.01)
    assert not room.done()  # the client is not reading: neither does the connection
    assert (await outbox.get())["n"] == 1
    await asyncio.wait_for(room, 1)
    drained = asyncio.ensure_future(outbox.drained())
    await asyncio.sleep(0.01)
    assert not drained.done()
    await outbox.get()
    await asyncio.wait_for(drained, 1)


async def test_get_waits_for_a_message() -> None:
    outbox = Outbox()
    waiting = asyncio.ensure_future(outbox.get())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    outbox.put({"type": "ack"})
    assert (await asyncio.wait_for(waiting, 1))["type"] == "ack"


def test_a_generate_message_is_the_flat_queue_body() -> None:
    message = {"type": "generate", "id": "a", "modality": "image", "family": "sd",
               "model": "tiny", "task": "t2i", "priority": "low", "ttl": 60,
               "request": {"prompt": "a fox", "steps": 4, "my_key": [1]}}  # fmt: skip
    assert queue_body_of(message) == {
        "modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
        "priority": "low", "ttl": 60, "prompt": "a fox", "steps": 4, "my_key": [1],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "generate", "id": 1, "prompt": "beside request"}, "prompt"),
        ({"type": "generate", "id": 1, "request": "a fox"}, "request"),
        ({"type": "generate", "id": 1, "request": {"prompt": "x", "task": "t2i"}}, "request.task"),
    ],
)
def test_a_misplaced_field_is_refused_by_name(message: dict[str, object], field: str) -> None:
    with pytest.raises(Refused) as refused:
        queue_body_of(message)
    assert refused.value.code == "invalid_request"
    assert refused.value.details == {"field": field}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a", "a"), (7, 7), ("x" * 128, "x" * 128), ("", None), ("x" * 129, None),
     (True, None), (None, None), (1.5, None), ([1], None)],
)  # fmt: skip
def test_client_ids(value: object, expected: object) -> None:
    assert client_id_of({"id": value}) == expected

"""The usage stream: every finished request's usage record, durable and in order.

It is the outbox of the metering hook. A job's record is appended in the same commit as the
job's final status (a sync request's before its response is sent), so a record exists if and
only if the request ended. Consumers read it as consumer groups with explicit acks, the shape
of Redis Streams (XADD / XREADGROUP / XACK / XPENDING): the hot path into ClickHouse is group
``clickhouse``, the cold path into the audit log group ``audit``, and the budgets' backstop
group ``budgets``. A group reads the entries
after its last ack and acks once they are safely delivered; a consumer that is behind — its
store down, or the process killed before an ack — reads the same unacked entries again, so
nothing is lost and everything replays in order.

Sequence numbers are ints, increasing in commit order: a reader that sees entry n has seen
every entry before it. Each group has one consumer at a time (the singleton role that owns
it), so a group's position is one number rather than a per-consumer pending list.

The entries every known group has acked are of no use to anyone and may be trimmed
(``trim_acked``, called by the metering role): the shared Redis would otherwise grow by every
record ever made. A trim never hands a sequence number out again and never touches an entry a
known group has not acked; ``month_usage`` is kept apart from the entries (or they are kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from render_gateway.core.usage_records import UsageRecord

# The consumer groups: the hot path (metering/writer.py) and the cold path (audit/batcher.py).
HOT_PATH_GROUP = "clickhouse"
COLD_PATH_GROUP = "audit"
# The budgets' backstop (application/budget_settler.py): each record's budget settle, replayed
# for the requests whose process died between the record's commit and its in-line settle.
BUDGET_GROUP = "budgets"
# Every group that reads the stream: an entry is trimmed only once all of them acked it (a
# group that never acked holds everything). A group not listed here must not rely on old
# entries: it reads from the oldest one left.
USAGE_GROUPS = (HOT_PATH_GROUP, COLD_PATH_GROUP, BUDGET_GROUP)


@dataclass(frozen=True)
class LoggedUsage:
    seq: int
    record: dict[str, Any]  # as UsageRecord.to_dict() wrote it


@dataclass(frozen=True)
class MonthUsage:
    customer_id: str
    gpu_seconds: float  # billable only
    cost_nanos: int


class UsageAlreadyLogged(ValueError):
    """A record with this event id is in the stream already (each is appended at most once)."""


class UsageStream(Protocol):
    async def append_usage(self, record: UsageRecord) -> int:
        """Append durably (returns once committed); the record's sequence number.
        UsageAlreadyLogged if its event id was appended before."""
        ...

    # Blocking calls for consumer threads (never the event loop).
    def read_group(self, group: str, count: int) -> list[LoggedUsage]:
        """Up to ``count`` entries after the group's last ack, in order. Until they are acked
        a read returns them again (a consumer restarted after a crash gets them back)."""
        ...

    def read_group_json(self, group: str, count: int) -> tuple[list[int], list[bytes]]:
        """As ``read_group``: sequence numbers and the records' stored JSON (without the
        signed claim), which the hot path parses in bulk."""
        ...

    def read_group_raw(
        self, group: str, count: int
    ) -> tuple[list[int], list[bytes], list[str | None]]:
        """As ``read_group``, unparsed: sequence numbers, the records' stored JSON (without the
        signed claim) and the claims' text, which the cold path turns into columns in bulk."""
        ...

    def ack(self, group: str, seq: int) -> None:
        """Everything up to ``seq`` is done for the group. Durable on return; the position
        never moves back (an older ack is a no-op)."""
        ...

    def acked(self, group: str) -> int:
        """The group's position: the highest acked sequence number (0: nothing acked)."""
        ...

    def head(self) -> int:
        """The highest sequence number appended (0 when empty)."""
        ...

    def lag(self, group: str) -> tuple[int, float | None]:
        """(entries not yet acked by the group, when the oldest of them was made — None when
        there is none)."""
        ...

    async def month_usage(self, month: str) -> list[MonthUsage]:
        """Billable usage per customer in a month (``YYYY-MM``), for budgets after a restart.
        Trims do not change it."""
        ...

    def trim_acked(self, groups: Sequence[str] = USAGE_GROUPS) -> int:
        """Drop the entries every one of ``groups`` has acked (up to the lowest position; 0 for a
        group that never acked, which keeps everything), atomically with reading the positions;
        the number dropped. ``head``, later sequence numbers, ``acked``, ``lag`` and every
        listed group's reads are as if nothing was dropped, and an event id is still refused
        while a duplicate append is possible. An implementation may keep more than it could
        drop (the SQLite stream keeps everything: see there). Blocking, like the reads."""
        ...


# The older name, which application/services.py still imports.
UsageLog = UsageStream

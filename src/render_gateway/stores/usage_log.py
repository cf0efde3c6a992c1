"""The usage log: every finished request's usage record, durable and in order.

It is the outbox of the metering hook. A job's record is appended in the same commit as the
job's final status (a sync request's before its response is sent), so a record exists if and
only if the request ended. Consumers (the hot path into ClickHouse, the cold path into the
audit log) each keep a cursor: the sequence number of the last record they have safely
delivered. A consumer that is behind — its store down, or the process killed before a flush —
reads on from its cursor, so nothing is lost and everything replays in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from render_gateway.core.usage_records import UsageRecord


@dataclass(frozen=True)
class LoggedUsage:
    seq: int
    record: dict[str, Any]  # as UsageRecord.to_dict() wrote it


@dataclass(frozen=True)
class MonthUsage:
    customer_id: str
    gpu_seconds: float  # billable only
    cost_nanos: int


class UsageLog(Protocol):
    async def append_usage(self, record: UsageRecord) -> int:
        """Append durably (returns once committed); the record's sequence number."""
        ...

    # Blocking calls for consumer threads (never the event loop).
    def usage_after(self, after: int, limit: int) -> list[LoggedUsage]: ...

    def usage_json_after(self, after: int, limit: int) -> tuple[list[int], list[bytes]]:
        """Sequence numbers and the records' stored JSON (without the signed claim): the hot
        path parses these in bulk."""
        ...

    def usage_head(self) -> int:
        """The highest sequence number written (0 when empty)."""
        ...

    def oldest_after(self, seq: int) -> float | None:
        """When the first record after ``seq`` was made (None if there is none)."""
        ...

    def usage_cursor(self, consumer: str) -> int: ...

    def set_usage_cursor(self, consumer: str, seq: int) -> None:
        """Durable on return. A cursor never moves backwards."""
        ...

    async def month_usage(self, month: str) -> list[MonthUsage]:
        """Billable usage per customer in a month (``YYYY-MM``), for budgets after a restart."""
        ...

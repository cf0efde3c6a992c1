"""``memory://`` usage stream: one process's list, for in-process application tests.

Nothing survives the process, so it has no place in a gateway that bills. Appends come from the
event loop and reads and acks from the consumers' threads: one lock keeps them consistent.
Records are stored as the JSON the SQLite stream stores, so consumers see the same values.
A trim drops the list's acked front (the month totals are kept apart, as in Redis); the event
ids are kept for the process's life.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from render_gateway.core.months import month_of
from render_gateway.core.usage_records import UsageRecord
from render_gateway.stores.usage_log import (
    USAGE_GROUPS,
    LoggedUsage,
    MonthUsage,
    UsageAlreadyLogged,
)


@dataclass(frozen=True)
class _Entry:
    record_json: bytes  # UsageRecord.to_dict() without the signed claim
    claim: str | None
    timestamp: float
    month: str
    billable: bool
    gpu_seconds: float
    cost_nanos: int
    customer_id: str


class MemoryUsageStream:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[_Entry] = []  # entry n has sequence number self._trimmed + n + 1
        self._trimmed = 0  # the entries dropped from the front by trims
        self._event_ids: set[str] = set()
        self._positions: dict[str, int] = {}
        # month → customer → billable (gpu-seconds, cost nanos), kept apart from the entries
        self._months: defaultdict[str, dict[str, tuple[float, int]]] = defaultdict(dict)

    async def append_usage(self, record: UsageRecord) -> int:
        fields = record.to_dict()
        claim = fields.pop("usage_claim")
        entry = _Entry(
            orjson.dumps(fields), claim, record.timestamp, month_of(record.timestamp),
            record.billable, record.gpu_seconds if record.billable else 0.0,
            record.cost_nanos, record.customer_id,
        )  # fmt: skip
        with self._lock:
            if record.event_id in self._event_ids:
                raise UsageAlreadyLogged(f"usage record {record.event_id} is in the stream already")
            self._event_ids.add(record.event_id)
            self._entries.append(entry)
            if entry.billable:
                totals = self._months[entry.month]
                gpu, nanos = totals.get(entry.customer_id, (0.0, 0))
                totals[entry.customer_id] = (gpu + entry.gpu_seconds, nanos + entry.cost_nanos)
            return self._trimmed + len(self._entries)

    def _after_position(self, group: str, count: int) -> list[tuple[int, _Entry]]:
        with self._lock:
            start = max(self._positions.get(group, 0), self._trimmed)
            chosen = self._entries[start - self._trimmed : start - self._trimmed + count]
        return list(enumerate(chosen, start + 1))

    def read_group(self, group: str, count: int) -> list[LoggedUsage]:
        return [
            LoggedUsage(seq, _with_claim(entry.record_json, entry.claim))
            for seq, entry in self._after_position(group, count)
        ]

    def read_group_json(self, group: str, count: int) -> tuple[list[int], list[bytes]]:
        chosen = self._after_position(group, count)
        return [seq for seq, _ in chosen], [entry.record_json for _, entry in chosen]

    def read_group_raw(
        self, group: str, count: int
    ) -> tuple[list[int], list[bytes], list[str | None]]:
        chosen = self._after_position(group, count)
        return (
            [seq for seq, _ in chosen],
            [entry.record_json for _, entry in chosen],
            [entry.claim for _, entry in chosen],
        )

    def ack(self, group: str, seq: int) -> None:
        with self._lock:
            self._positions[group] = max(self._positions.get(group, 0), seq)

    def acked(self, group: str) -> int:
        with self._lock:
            return self._positions.get(group, 0)

    def head(self) -> int:
        with self._lock:
            return self._trimmed + len(self._entries)

    def lag(self, group: str) -> tuple[int, float | None]:
        with self._lock:
            # An ack past the head (a group that acked what another stream held) clamps to it.
            head = self._trimmed + len(self._entries)
            position = min(self._positions.get(group, 0), head)
            waiting = head - position
            oldest = position - self._trimmed  # below 0: a group trim_acked was not told of
            timestamp = (
                self._entries[max(oldest, 0)].timestamp if waiting and self._entries else None
            )
            return waiting, timestamp

    async def month_usage(self, month: str) -> list[MonthUsage]:
        with self._lock:
            totals = dict(self._months.get(month, {}))
        return [MonthUsage(customer, gpu, nanos) for customer, (gpu, nanos) in totals.items()]

    def trim_acked(self, groups: Sequence[str] = USAGE_GROUPS) -> int:
        if not groups:
            raise ValueError("trim_acked needs the groups whose acks allow a trim")
        with self._lock:
            lowest = min(self._positions.get(group, 0) for group in groups)
            drop = max(0, min(lowest, self._trimmed + len(self._entries)) - self._trimmed)
            del self._entries[:drop]
            self._trimmed += drop
            return drop


def _with_claim(record_json: bytes, claim: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = orjson.loads(record_json)
    fields["usage_claim"] = claim
    return fields

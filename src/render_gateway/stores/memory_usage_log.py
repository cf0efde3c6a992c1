"""``memory://`` usage stream: one process's list, for in-process application tests.

Nothing survives the process, so it has no place in a gateway that bills. Appends come from the
event loop and reads and acks from the consumers' threads: one lock keeps them consistent.
Records are stored as the JSON the SQLite stream stores, so consumers see the same values.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson

from render_gateway.core.months import month_of
from render_gateway.core.usage_records import UsageRecord
from render_gateway.stores.usage_log import LoggedUsage, MonthUsage, UsageAlreadyLogged


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
        self._entries: list[_Entry] = []  # entry n has sequence number n + 1
        self._event_ids: set[str] = set()
        self._positions: dict[str, int] = {}

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
            return len(self._entries)

    def _after_position(self, group: str, count: int) -> list[tuple[int, _Entry]]:
        with self._lock:
            start = self._positions.get(group, 0)
            chosen = self._entries[start : start + count]
        return list(enumerate(chosen, start + 1))

    def read_group(self, group: str, count: int) -> list[LoggedUsage]:
        return [
            LoggedUsage(seq, _with_claim(entry.record_json, entry.claim))
            for seq, entry in self._after_position(group, count)
        ]

    def read_group_json(self, group: str, count: int) -> tuple[list[int], list[bytes]]:
        chosen = self._after_position(group, count)
        return [seq for seq, _ in chosen], [entry.record_json for _, entry in chosen]

    def ack(self, group: str, seq: int) -> None:
        with self._lock:
            self._positions[group] = max(self._positions.get(group, 0), seq)

    def acked(self, group: str) -> int:
        with self._lock:
            return self._positions.get(group, 0)

    def head(self) -> int:
        with self._lock:
            return len(self._entries)

    def lag(self, group: str) -> tuple[int, float | None]:
        with self._lock:
            # An ack past the head (a group that acked what another stream held) clamps to it.
            position = min(self._positions.get(group, 0), len(self._entries))
            waiting = len(self._entries) - position
            return waiting, self._entries[position].timestamp if waiting else None

    async def month_usage(self, month: str) -> list[MonthUsage]:
        gpu: defaultdict[str, float] = defaultdict(float)
        nanos: defaultdict[str, int] = defaultdict(int)
        with self._lock:
            for entry in self._entries:
                if entry.month == month and entry.billable:
                    gpu[entry.customer_id] += entry.gpu_seconds
                    nanos[entry.customer_id] += entry.cost_nanos
        return [MonthUsage(customer, gpu[customer], nanos[customer]) for customer in gpu]


def _with_claim(record_json: bytes, claim: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = orjson.loads(record_json)
    fields["usage_claim"] = claim
    return fields

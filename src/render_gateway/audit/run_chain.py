"""The signed chain of reconciliation entries in the audit store (``log/reconciliations/``):
each entry a signed note naming the SHA-256 of the note before it, so that the history of
checks is itself tamper-evident. Writing and reading the chain need only the store and the log
key: offline verification (audit/verify.py) reads it without the reconciler's stack (DuckDB,
ClickHouse), whose import alone cost ~0.67 s a run (measured with ``python -X importtime``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from render_gateway.audit.signed_note import (
    NoteError,
    NoteSigner,
    NoteVerifier,
    open_note,
    sign_note,
)
from render_gateway.stores.objects import ObjectStore

RUNS_PREFIX = "log/reconciliations/"
HEADER = "render-gateway reconciliation"
GENESIS = "0" * 64


@dataclass(frozen=True)
class RunEntry:
    index: int
    summary: dict[str, Any]


def append_entry(objects: ObjectStore, signer: NoteSigner, summary: dict[str, Any]) -> None:
    """Sign ``summary`` as the chain's next entry, after the last one stored."""
    keys = objects.list(RUNS_PREFIX)
    previous = hashlib.sha256(objects.get(keys[-1])).hexdigest() if keys else GENESIS
    body = orjson.dumps(summary, option=orjson.OPT_SORT_KEYS).decode()
    note = sign_note(f"{HEADER}\n{body}\nprevious {previous}\n", [signer])
    objects.put_new(f"{RUNS_PREFIX}{len(keys):020d}", note)


def verify_runs(
    objects: ObjectStore, verifiers: list[NoteVerifier]
) -> tuple[list[RunEntry], list[str]]:
    """The signed run entries in order, and what is wrong with the chain (empty when intact)."""
    entries: list[RunEntry] = []
    problems: list[str] = []
    previous = GENESIS
    for position, key in enumerate(objects.list(RUNS_PREFIX)):
        where = f"reconciliation entry {position}"
        note = objects.get(key)
        try:
            text, _ = open_note(note, verifiers)
        except NoteError as exc:
            problems.append(f"{where}: does not verify: {exc}")
            previous = hashlib.sha256(note).hexdigest()
            continue
        lines = text.rstrip("\n").split("\n")
        if key != f"{RUNS_PREFIX}{position:020d}":
            problems.append(f"{where}: stored as {key}: an entry is missing before it")
        if len(lines) != 3 or lines[0] != HEADER or not lines[2].startswith("previous "):
            problems.append(f"{where}: not a reconciliation entry")
        elif lines[2].removeprefix("previous ") != previous:
            problems.append(f"{where}: does not follow the entry before it (removed or reordered)")
        else:
            entries.append(RunEntry(position, orjson.loads(lines[1])))
        previous = hashlib.sha256(note).hexdigest()
    return entries, problems

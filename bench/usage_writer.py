"""The metering hot path's writer: usage records per second from the usage log into chDB.

(1) Drain: the usage log (SQLite, in a real ``SqliteJobStore`` file) is pre-filled with N
    realistic records (untimed); then a ``UsageWriter`` with a fresh chDB store (opened and
    migrated beforehand, as the gateway does at start) is started, and the time from ``start()``
    until ``wait_caught_up`` returns is measured. Measured: records/s, and the process's CPU per
    1,000 records split by thread: the writer thread, the job store's writer thread (cursor
    commits), and every other thread (chDB's own insert/merge threads, Arrow) — all of it is
    the cost of delivering the records.
(2) Floor: the same rows as ONE prepared Arrow table (built from the log and with the writer's
    dedup tokens computed beforehand, untimed) inserted with the raw ``store.insert`` in slices
    of the same batch size into another fresh chDB store: the same ClickHouse work with nothing
    of the writer around it. Then where the writer's time goes, timed piece by piece on the
    same data on one thread: SQLite read, ``records_json_to_table`` (the JSON, parsed in bulk
    by Arrow), the dedup token,
    and the insert (the floor), and the one look-up of stored event ids that the first batch
    after a start makes (in case it was inserted before a crash).
(3) Paced: 10,000 records/s appended with ``append_usage_row`` (every 10 ms one transaction of
    100 records, synchronous=FULL, as a job's settle appends its record) to a running writer
    (flush interval 1 s), and the CPU of each thread over the window as % of one core.
    ``--appender process`` (default): the appends come from a second process, so that every
    CPU second of this process is the writer's (its thread, its cursor commits, chDB's threads).
    ``--appender thread``: through the job store's own writer thread in this process, as in the
    gateway, where appends and the writer share one GIL. At 10,000/s with 20,000-row batches,
    ``notify`` never wakes the writer early, so the writer flushes on its interval in both.

The appends are not what is measured in (1) and (2); in (3) they are counted apart from the
writer. CPU of a Python thread is read from its own POSIX CPU clock
(``pthread_getcpuclockid``); "other threads" is the process's total minus the named threads.
Everything lives in a temporary directory, removed at the end.

    python bench/usage_writer.py [--records 200000] [--seconds 10] [--batch-rows 20000]
                                 [--appender process|thread|both]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import blake3
import orjson
import pyarrow as pa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.core.usage_records import UsageRecord, build_record
from render_gateway.metering.columns import records_json_to_table
from render_gateway.metering.store import ClickHouseUsageStore, open_usage_store
from render_gateway.metering.writer import UsageWriter, _token
from render_gateway.signing_keys import key_id
from render_gateway.stores.sqlite_jobs import SqliteJobStore
from render_gateway.stores.sqlite_usage_log import append_usage_row
from render_gateway.usage_claim import UsageClaim, sign_claim

# (modality, family, model, steps, dims parameters, GPU-seconds)
MODELS = (
    ("image", "flux", "schnell", 4, {"width": 1024, "height": 1024}, 0.9),
    ("image", "flux", "dev", 28, {"width": 1024, "height": 768}, 6.2),
    ("image", "sd35", "large", 30, {"width": 1024, "height": 1024}, 5.1),
    ("image", "sdxl", "base", 25, {"width": 768, "height": 768}, 2.4),
    ("video", "hunyuan", "t2v", 30, {"num_frames": 61, "width": 848, "height": 480}, 48.0),
    ("video", "ltx", "0.9", 20, {"num_frames": 97, "width": 768, "height": 512}, 11.5),
)
CUSTOMERS = 50
DEVICES = 8
OUTCOMES = ("success",) * 17 + ("error", "cancelled", "success")  # 1 in 20 each
CLAIMS = 256  # distinct real signed claims, reused round-robin (signing 200k would dominate)


# ------------------------------------------------------------------------------ records


def signed_claims(count: int) -> list[str]:
    """Real Ed25519-signed usage claims in the single-string form backends send."""
    key = Ed25519PrivateKey.generate()
    kid = key_id(key.public_key())
    claims = []
    for n in range(count):
        claim = UsageClaim(
            request_id=f"req_{n:016x}", model="image/flux/schnell",
            device_uuid=f"GPU-3e5cfb0c-a259-d849-2fc2-{n % DEVICES:012x}", device_kind="cuda",
            gpu_seconds=0.9 + n / 1000, started_at="2026-11-22T10:00:00.000000Z",
            ended_at="2026-11-22T10:00:00.900000Z", seed=n, output_blake3=(f"{n:064x}",),
            status="complete", steps_completed=4, key_id=kid,
        )  # fmt: skip
        claims.append(sign_claim(claim, key).to_text())
    return claims


def make_record(n: int, ended_at: float, claims: list[str]) -> UsageRecord:
    modality, family, model, steps, dims, gpu = MODELS[n % len(MODELS)]
    outcome = OUTCOMES[n % len(OUTCOMES)]
    tier = "async" if n % 4 == 0 else "sync"
    parameters: dict[str, Any] = {
        **dims, "steps": steps, "gpu_seconds": gpu * (0.9 + (n % 21) / 100),
        "device_uuid": f"GPU-3e5cfb0c-a259-d849-2fc2-{n % DEVICES:012x}", "device_kind": "cuda",
        "usage_claim": claims[n % len(claims)],
    }  # fmt: skip
    return build_record(
        request_id=f"req_{n:016x}", customer_id=f"cust_{n % CUSTOMERS:03d}",
        plan=("free", "pro", "enterprise")[n % 3], tier=tier, modality=modality, family=family,
        model=model, created_at=ended_at - gpu - 0.3, started_at=ended_at - gpu,
        ended_at=ended_at, outcome=outcome,
        parameters=parameters if outcome != "error" else {}, unit_price=0.00042,
        currency="USD", backend=f"node-{n % DEVICES}",
        error_code="backend_error" if outcome == "error" else None,
        job_id=f"job_{n:016x}" if tier == "async" else None,
    )  # fmt: skip


def prefill(path: Path, count: int, claims: list[str], chunk: int = 10_000) -> float:
    """Append ``count`` records straight into the log (one transaction per chunk); returns the
    average stored JSON size in bytes."""
    now = time.time()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for start in range(0, count, chunk):
            conn.execute("BEGIN IMMEDIATE")
            for n in range(start, min(count, start + chunk)):
                append_usage_row(conn, make_record(n, now - (count - n) * 0.005, claims))
            conn.execute("COMMIT")
        (size,) = conn.execute("SELECT AVG(LENGTH(record)) FROM usage_log").fetchone()
    finally:
        conn.close()
    return float(size)


# ------------------------------------------------------------------------------ CPU clocks


def thread_cpu(thread: threading.Thread) -> float:
    """CPU seconds of a live Python thread (its own POSIX CPU clock)."""
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def named(name: str) -> threading.Thread:
    return next(t for t in threading.enumerate() if t.name == name)


@dataclass
class CpuSplit:
    """CPU seconds by thread over a window; ``other`` = process total − the named threads
    (chDB's and Arrow's native threads, and any other Python thread)."""

    wall: float = 0.0
    total: float = 0.0
    threads: dict[str, float] = field(default_factory=dict)

    @property
    def other(self) -> float:
        return self.total - sum(self.threads.values())


@contextmanager
def cpu_window(threads: dict[str, threading.Thread]) -> Iterator[CpuSplit]:
    split = CpuSplit()
    before = {name: thread_cpu(t) for name, t in threads.items()}
    total, wall = time.process_time(), time.perf_counter()
    yield split
    split.wall = time.perf_counter() - wall
    split.total = time.process_time() - total
    # A thread started inside the window (the writer's) counts from zero.
    split.threads = {name: thread_cpu(t) - before.get(name, 0.0) for name, t in threads.items()}


# ------------------------------------------------------------------------------ phases


@dataclass
class Pieces:
    """Seconds spent on each piece of the writer's work, and the prepared batches."""

    read: float = 0.0
    parse: float = 0.0
    table: float = 0.0
    token: float = 0.0
    json_token: float = 0.0  # the writer's normal path: join the batch's JSON, BLAKE3 of it
    json_insert: float = 0.0  # store.insert_json of those bytes (ClickHouse parses them)
    check: float = 0.0  # the first batch after a start: which of its event ids are stored
    batches: list[tuple[pa.Table, str]] = field(default_factory=list)
    json_batches: list[tuple[bytes, str]] = field(default_factory=list)
    first: tuple[list[str], float, float] = ([], 0.0, 0.0)  # its ids, min and max timestamp


def time_pieces(path: Path, batch_rows: int) -> Pieces:
    """The writer's steps on the whole log, one batch at a time, each timed (this thread)."""
    pieces = Pieces()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    cursor = 0
    clock = time.perf_counter
    records_json_to_table(
        [r for (r,) in conn.execute("SELECT record FROM usage_log LIMIT 10")]
    )  # warm-up: Arrow's first use
    try:
        while True:
            t0 = clock()
            raw = conn.execute(
                "SELECT seq, record FROM usage_log WHERE seq > ? ORDER BY seq LIMIT ?",
                (cursor, batch_rows),
            ).fetchall()
            t1 = clock()
            if not raw:
                break
            seqs, blobs = [seq for seq, _ in raw], [record for _, record in raw]
            t2 = clock()
            table = records_json_to_table(blobs)  # the writer's path: Arrow's C++ JSON reader
            t3 = clock()
            token = _token(table)
            t4 = clock()
            data = b"\n".join(blobs)
            json_token = blake3.blake3(data).hexdigest()
            t5 = clock()
            pieces.read += t1 - t0
            pieces.parse += t2 - t1
            pieces.table += t3 - t2
            pieces.token += t4 - t3
            pieces.json_token += t5 - t4
            pieces.batches.append((table, token))
            pieces.json_batches.append((data, json_token))
            if not cursor:
                stamps = table.column("timestamp").to_pylist()
                ids = table.column("event_id").to_pylist()
                pieces.first = (ids, min(stamps).timestamp(), max(stamps).timestamp())
            cursor = seqs[-1]
    finally:
        conn.close()
    return pieces


def count_rows(store: ClickHouseUsageStore) -> int:
    ((count,),) = store.rows("SELECT count() FROM inference_events")
    return int(count)


def floor(url: str, pieces: Pieces, batch_rows: int) -> tuple[CpuSplit, int]:
    """The prepared rows as one Arrow table, inserted raw in slices of ``batch_rows``."""
    table = pa.concat_tables([t for t, _ in pieces.batches]).combine_chunks()
    tokens = [token for _, token in pieces.batches]
    store = open_usage_store(url)
    try:
        main = threading.main_thread()
        with cpu_window({"inserting thread": main}) as split:
            for index, start in enumerate(range(0, table.num_rows, batch_rows)):
                store.insert(table.slice(start, batch_rows), dedup_token=tokens[index])
        t0 = time.perf_counter()  # what the writer's first batch after a start looks up
        present = store.existing_event_ids(*pieces.first)
        pieces.check = time.perf_counter() - t0
        assert len(present) == len(pieces.first[0])
        return split, count_rows(store)
    finally:
        store.close()


def time_json_insert(url: str, pieces: Pieces) -> None:
    """The writer's normal insert alone: each batch's JSON into a fresh store."""
    store = open_usage_store(url)
    try:
        t0 = time.perf_counter()
        for data, token in pieces.json_batches:
            store.insert_json(data, dedup_token=token)
        pieces.json_insert = time.perf_counter() - t0
    finally:
        store.close()


def drain(jobs: SqliteJobStore, url: str, batch_rows: int) -> tuple[CpuSplit, int, int]:
    writer = UsageWriter(jobs.usage_log, lambda: open_usage_store(url), batch_rows, 1.0)
    writer.store = open_usage_store(url)  # opened and migrated at start, as the gateway does
    try:
        threads = {"job store writer": named("sqlite-jobs-writer"), "main": threading.main_thread()}
        with cpu_window(threads) as split:
            writer.start()
            threads["usage-writer"] = named("usage-writer")
            caught_up = writer.wait_caught_up(600)
        assert caught_up, "the writer did not catch up in 600 s"
        assert writer.store is not None
        stored = count_rows(writer.store)
        return split, stored, writer.stats.batches
    finally:
        writer.stop(drain_seconds=0)


TICK = 0.01  # the appender appends rate * TICK records every TICK seconds, in one transaction


def append_op(batch: list[UsageRecord]) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        for record in batch:
            append_usage_row(conn, record)

    return op


def paced_records(rate: int, seconds: float, claims: list[str]) -> list[list[UsageRecord]]:
    per_tick, ticks = max(1, round(rate * TICK)), round(seconds / TICK)
    now = time.time()
    return [
        [make_record(1_000 + k * per_tick + i, now, claims) for i in range(per_tick)]
        for k in range(ticks)
    ]


def append_child(path: Path, rate: int, seconds: float) -> None:
    """``--append-child``: build the records, say ready, wait for a line on stdin, then append
    them at ``rate`` (rate * TICK records every TICK s, with synchronous=FULL like the job
    store; ticks that are due together share one transaction); print what was done as JSON."""
    batches = paced_records(rate, seconds, signed_claims(CLAIMS))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 5000")
    print("ready", flush=True)
    sys.stdin.readline()
    cpu, start = time.process_time(), time.perf_counter()
    done = 0
    while done < len(batches):
        delay = start + done * TICK - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        # Every batch that is due by now, in one transaction (group commit, as the job store
        # does when operations queue up): a late tick does not lower the rate.
        due = min(len(batches), max(done + 1, int((time.perf_counter() - start) / TICK) + 1))
        conn.execute("BEGIN IMMEDIATE")
        for batch in batches[done:due]:
            append_op(batch)(conn)
        conn.execute("COMMIT")
        done = due
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    conn.close()
    appended = sum(map(len, batches))
    print(orjson.dumps({"appended": appended, "seconds": elapsed, "cpu": cpu}).decode())


@dataclass
class Paced:
    split: CpuSplit
    appended: int
    append_seconds: float
    batches: int
    stored: int
    idle: CpuSplit
    child_cpu: float | None = None  # the appender process's CPU seconds (process mode)


async def paced(
    path: Path, url: str, args: argparse.Namespace, claims: list[str], in_process: bool
) -> Paced:
    jobs = SqliteJobStore(path)
    await jobs.open()
    writer = UsageWriter(
        jobs.usage_log, lambda: open_usage_store(url), args.batch_rows, args.flush_interval
    )
    writer.store = await asyncio.to_thread(open_usage_store, url)
    writer.start()
    child: subprocess.Popen[str] | None = None

    def submit(batch: list[UsageRecord]) -> Future[Any]:
        future: Future[Any] = jobs._writer.submit(append_op(batch))  # the job store's thread
        future.add_done_callback(lambda f: f.exception() or writer.notify(len(batch)))
        return future

    try:
        if in_process:
            batches = await asyncio.to_thread(paced_records, args.rate, args.seconds, claims)
        else:
            command = [sys.executable, __file__, "--append-child", str(path),
                       "--rate", str(args.rate), "--seconds", str(args.seconds)]  # fmt: skip
            child = await asyncio.to_thread(
                subprocess.Popen, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert child.stdin is not None and child.stdout is not None
        now = time.time()
        warm = [make_record(n, now, claims) for n in range(1_000)]
        await asyncio.wrap_future(submit(warm))  # warm-up: the first insert into the table
        assert await asyncio.to_thread(writer.wait_caught_up, 60)
        if child is not None:
            assert child.stdout is not None and child.stdin is not None
            ready = await asyncio.to_thread(child.stdout.readline)
            assert ready.strip() == "ready", f"appender process: {ready!r}"
        threads = {
            "usage-writer": named("usage-writer"),
            "job store writer": named("sqlite-jobs-writer"),
            "main (pacing / waiting)": threading.main_thread(),
        }
        with cpu_window(threads) as idle:  # a quiet second: chDB's background baseline
            await asyncio.to_thread(time.sleep, 1.0)
        child_cpu = None
        with cpu_window(threads) as split:
            if child is not None:
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write("go\n")
                child.stdin.flush()
                report = orjson.loads(await asyncio.to_thread(child.stdout.readline))
                appended, append_seconds = int(report["appended"]), float(report["seconds"])
                child_cpu = float(report["cpu"])
            else:
                loop = asyncio.get_running_loop()
                start = loop.time()
                last: Future[Any] | None = None
                for k, batch in enumerate(batches):
                    delay = start + k * TICK - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    last = submit(batch)
                assert last is not None
                await asyncio.wrap_future(last)
                append_seconds = loop.time() - start
                appended = sum(map(len, batches))
            writer.flush()
            caught_up = writer.wait_caught_up(120)  # blocking on purpose: inside the window
        assert caught_up, "the writer did not catch up in 120 s"
        assert writer.store is not None
        stored = count_rows(writer.store) - len(warm)
        return Paced(split, appended, append_seconds, writer.stats.batches - 1, stored, idle,
                     child_cpu)  # fmt: skip
    finally:
        if child is not None:
            child.kill()
            child.wait()
        await asyncio.to_thread(writer.stop, 0)
        jobs.usage_log.close_thread_connection()
        await jobs.close()


# ------------------------------------------------------------------------------ report


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            model,
        )
    except OSError:
        pass
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores ({model}); Python "
        f"{platform.python_version()}; chdb {version('chdb')}; pyarrow {version('pyarrow')}; "
        f"clickhouse-connect {version('clickhouse-connect')}; load average before: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    )


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


async def open_jobs(path: Path) -> SqliteJobStore:
    jobs = SqliteJobStore(path)
    await jobs.open()
    return jobs


def ms_per_k(seconds: float, records: int) -> str:
    return f"{seconds * 1e6 / records:6.2f}"


def report_drain(
    n: int, pieces: Pieces, drain_cpu: CpuSplit, batches: int, floor_cpu: CpuSplit
) -> float:
    w, f = drain_cpu, floor_cpu
    writer_rate, floor_rate = n / w.wall, n / f.wall
    print(f"\n(1) drain and (2) floor: {n:,} records each into a fresh chDB store")
    print(f"{'':38}{'records/s':>10}{'wall s':>8}   process CPU, ms per 1,000 records")
    label = f"writer: log -> chDB, {batches} batches"
    print(f"{label:38}{writer_rate:10,.0f}{w.wall:8.2f}"
          f"   {ms_per_k(w.total, n)} = {ms_per_k(w.threads['usage-writer'], n)} writer thread"
          f" + {ms_per_k(w.threads['job store writer'], n)} cursor commits"
          f" + {ms_per_k(w.threads['main'], n)} main (waiting)"
          f" + {ms_per_k(w.other, n)} other threads (chDB)")  # fmt: skip
    print(f"{'floor: prepared Arrow, store.insert':38}{floor_rate:10,.0f}{f.wall:8.2f}"
          f"   {ms_per_k(f.total, n)} = {ms_per_k(f.threads['inserting thread'], n)} inserting"
          f" thread + {ms_per_k(f.other, n)} other threads (chDB)")  # fmt: skip
    print(f"ratio writer/floor: {writer_rate / floor_rate:.3f} in records/s "
          f"(the writer takes {w.wall / f.wall:.1f}x the floor's time and "
          f"{w.total / f.total:.1f}x its CPU)")  # fmt: skip

    print("\nwhere the writer's time goes (each piece timed on the same data, one thread):")
    print(f"  {'':52}{'ms/1k':>7}  of the writer's wall")
    parts = [
        ("SQLite read (SELECT seq, record ... LIMIT batch)", pieces.read),
        ("split rows (seq, JSON bytes)", pieces.parse),
        ("join the JSON + dedup token (blake3 of the bytes)", pieces.json_token),
        ("insert_json: ClickHouse parses + inserts", pieces.json_insert),
    ]
    careful = [  # the first batch after a start or failure, and a refused batch
        ("records_json_to_table (JSON -> Arrow, C++)", pieces.table),
        ("dedup token (blake3 over the event ids)", pieces.token),
        ("insert of prepared Arrow (the floor's wall)", f.wall),
        ("stored-ids lookup (first batch after start, once)", pieces.check),
    ]
    total = sum(seconds for _, seconds in parts)
    parts += [
        ("sum of the pieces", total),
        ("writer drain, wall", w.wall),
        ("writer wall - sum (cursor commits, observe; +-noise)", w.wall - total),
    ]
    for label, seconds in parts:
        print(f"  {label:52}{ms_per_k(seconds, n):>7}  {seconds / w.wall:6.1%}")
    print("  the careful path instead (first batch after a start or a failure; a batch the store")
    print("  refused), for comparison:")
    for label, seconds in careful:
        print(f"  {label:52}{ms_per_k(seconds, n):>7}  {seconds / w.wall:6.1%}")
    return writer_rate


def report_paced(p: Paced, args: argparse.Namespace, mode: str) -> None:
    s = p.split
    print(f"\n(3) paced, appender {mode}: {p.appended:,} records appended at "
          f"{p.appended / p.append_seconds:,.0f}/s (asked {args.rate:,}/s) over "
          f"{p.append_seconds:.2f} s, {round(args.rate * TICK)} per transaction every "
          f"{TICK * 1000:.0f} ms; writer: flush {args.flush_interval:g} s, batch_rows "
          f"{args.batch_rows:,}, {p.batches} batches; window until caught up "
          f"{s.wall:.2f} s")  # fmt: skip
    print(f"  {'CPU, % of one core over the window':48}{'busy':>7}   (a quiet second before)")
    rows = [(name, busy, p.idle.threads[name]) for name, busy in s.threads.items()]
    rows.append(("other threads of this process (chDB, Arrow)", s.other, p.idle.other))
    rows.append(("this process, total", s.total, p.idle.total))
    if p.child_cpu is not None:
        rows.append(("appender process (its own count)", p.child_cpu, 0.0))
    for name, busy, idle in rows:
        print(f"  {name:48}{busy / s.wall:7.1%}   ({idle / p.idle.wall:5.1%})")
    if p.child_cpu is not None:  # nothing in this process appends
        delivery = s.total
        what = "whole process (writer + cursor commits + chDB)"
    else:
        delivery = s.threads["usage-writer"] + s.other
        what = "writer + chDB threads"
    rate = p.appended / p.append_seconds
    writer = s.threads["usage-writer"]
    print(f"  CPU per record: writer thread {writer / p.appended * 1e6:.1f} us, {what} "
          f"{delivery / p.appended * 1e6:.1f} us; over the window at {rate:,.0f}/s: "
          f"{writer / s.wall:.1%} and {delivery / s.wall:.1%} of a core")  # fmt: skip
    at_writer, at = writer / p.appended * args.rate, delivery / p.appended * args.rate
    print(f"  <= 5% of a core at {args.rate:,}/s (CPU per record x {args.rate:,}/s): writer "
          f"thread {at_writer:.1%} -> {verdict(at_writer <= 0.05)}; {what} {at:.1%} -> "
          f"{verdict(at <= 0.05)}")  # fmt: skip
    if rate < 0.95 * args.rate and p.child_cpu is not None:
        print(f"  NB: only {rate:,.0f}/s of {args.rate:,}/s was reached: the appender "
              f"process used {p.child_cpu / s.wall:.0%} of a core (to_dict, fsync)")  # fmt: skip
    elif rate < 0.95 * args.rate:
        print(f"  NB: only {rate:,.0f}/s of {args.rate:,}/s was reached: this process "
              f"used {s.total / s.wall:.0%} of a core (its Python threads: one GIL)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the paced run")
    parser.add_argument("--rate", type=int, default=10_000, help="paced records/s")
    parser.add_argument("--batch-rows", type=int, default=20_000)
    parser.add_argument("--flush-interval", type=float, default=1.0)
    parser.add_argument(
        "--appender", choices=("process", "thread", "both"), default="process",
        help="paced appends from a second process (default; isolates the writer), from the job "
        "store's thread in this process (as in the gateway: one GIL), or both",
    )  # fmt: skip
    parser.add_argument("--append-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The synthetic claims are signed by a key the records' build is not given: build_record
    # logs that for every record (an operator's alarm, not the writer's cost), which would bury
    # the report. The records keep their claim_error, so their JSON is the same size.
    logging.getLogger("render_gateway.core.usage_records").setLevel(logging.CRITICAL)
    if args.append_child is not None:
        append_child(args.append_child, args.rate, args.seconds)
        return
    n, rows = args.records, args.batch_rows
    print(machine())
    claims = signed_claims(CLAIMS)
    with tempfile.TemporaryDirectory(prefix="bench-usage-writer-") as scratch:
        root = Path(scratch)
        jobs_path = root / "jobs.db"
        jobs = asyncio.run(open_jobs(jobs_path))  # creates the schema; its thread keeps running
        try:
            t0 = time.perf_counter()
            size = prefill(jobs_path, n, claims)
            print(f"usage log pre-filled with {n:,} records in {time.perf_counter() - t0:.1f} s "
                  f"(untimed): {CUSTOMERS} customers, {len(MODELS)} models, real signed claims "
                  f"of {len(claims[0])} bytes, {size:.0f} bytes of JSON per record; "
                  f"batch_rows {rows:,}")  # fmt: skip
            pieces = time_pieces(jobs_path, rows)
            floor_cpu, floor_rows = floor(f"chdb://{root / 'floor.chdb'}", pieces, rows)
            time_json_insert(f"chdb://{root / 'json.chdb'}", pieces)
            drain_cpu, drain_rows, batches = drain(jobs, f"chdb://{root / 'drain.chdb'}", rows)
        finally:
            jobs.usage_log.close_thread_connection()
            asyncio.run(jobs.close())
        assert floor_rows == n, f"floor stored {floor_rows} of {n}"
        assert drain_rows == n, f"writer stored {drain_rows} of {n}"
        writer_rate = report_drain(n, pieces, drain_cpu, batches, floor_cpu)
        print(f"  >= 50,000 records/s: the writer drained {writer_rate:,.0f}/s -> "
              f"{verdict(writer_rate >= 50_000)} (the design's 10,000/s: "
              f"{verdict(writer_rate >= 10_000)})")  # fmt: skip

        modes = ("process", "thread") if args.appender == "both" else (args.appender,)
        for index, mode in enumerate(modes):
            in_process = mode == "thread"
            label = (
                "in this process (the job store's thread)" if in_process else "in a second process"
            )
            result = asyncio.run(
                paced(root / f"paced{index}.db", f"chdb://{root / f'paced{index}.chdb'}", args,
                      claims, in_process)
            )  # fmt: skip
            assert result.stored == result.appended, f"stored {result.stored} of {result.appended}"
            report_paced(result, args, label)


if __name__ == "__main__":
    main()

"""Reconciliation on real stores: chDB (filled by the hot-path writer) against attestation
batches in a local CAS (filled by the batcher), each fault injected into the real store."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from render_gateway.application.reconciler import Reconciler
from render_gateway.application.webhooks import WebhookSecret, WebhookSender
from render_gateway.audit import reconcile as reconcile_module
from render_gateway.audit.batcher import AttestationBatcher
from render_gateway.audit.cas import ContentStore
from render_gateway.audit.keys import load_signer
from render_gateway.audit.leaves import LEAVES_PREFIX, BatchLeaf, leaf_key
from render_gateway.audit.log import open_audit_log
from render_gateway.audit.reconcile import reconcile
from render_gateway.audit.reconcile_runs import recent_runs, record_run
from render_gateway.audit.run_chain import RUNS_PREFIX, verify_runs
from render_gateway.audit.verify import verify_log
from render_gateway.config import ReconcileConfig
from render_gateway.metering.columns import records_to_table
from render_gateway.metering.queries import TimeRange
from render_gateway.metering.store import ClickHouseUsageStore, open_usage_store
from render_gateway.metering.writer import UsageWriter
from render_gateway.stores.objects import ObjectStore, open_object_store
from render_gateway.stores.sqlite_jobs import SqliteJobStore
from render_gateway.url_policy import UrlPolicy

from support.audit_fixtures import signed_record
from support.processes import free_port

ORIGIN = "render-gateway/test"
N = 40
MANY = 300


@dataclass
class Paths:
    usage: ClickHouseUsageStore
    objects: ObjectStore
    data: Path
    request_ids: list[str]

    def window(self) -> TimeRange:
        now = datetime.now(UTC)
        return TimeRange(now - timedelta(hours=1), now + timedelta(hours=1))


@pytest.fixture
async def paths(tmp_path: Path) -> AsyncIterator[Paths]:
    """N requests (two customers) through both real writers into both real stores."""
    filled = await fill(tmp_path, N)
    yield filled
    filled.usage.close()


@pytest.fixture
async def many(tmp_path: Path) -> AsyncIterator[Paths]:
    """MANY requests, so 30 batches of 10, ended 10 ms apart (evenly: the batches' time windows
    are then as wide as reconcile's cells, whatever the machine's pace)."""
    filled = await fill(tmp_path, MANY, spacing=0.01)
    yield filled
    filled.usage.close()


async def fill(tmp_path: Path, n: int, spacing: float | None = None) -> Paths:
    """n requests (two customers) through both real writers into both real stores; ``spacing``:
    their end times that many seconds apart (else: as they are made)."""
    jobs = SqliteJobStore(tmp_path / "jobs.db")
    await jobs.open()
    objects = open_object_store((tmp_path / "cas").as_uri())
    signer = load_signer(tmp_path, ORIGIN)

    open_log = functools.partial(open_audit_log, objects, signer, ORIGIN)

    url = f"chdb://{tmp_path / 'usage'}"
    writer = UsageWriter(jobs.usage_log, lambda: open_usage_store(url), 1000, 0.05)
    batcher = AttestationBatcher(jobs.usage_log, open_log, 10, 3600)
    writer.start()
    batcher.start()
    records = [signed_record(i, 0.25 + i / 100, customer=f"c{i % 2}") for i in range(n)]
    if spacing is not None:
        start = time.time() - n * spacing
        records = [replace(r, timestamp=start + i * spacing) for i, r in enumerate(records)]
    for record in records:
        await jobs.usage_log.append_usage(record)
    writer.notify(n)
    assert await asyncio.to_thread(writer.wait_caught_up, 20.0)
    assert await asyncio.to_thread(batcher.seal, 20.0)
    await asyncio.to_thread(batcher.stop, 0)
    assert writer.store is not None
    usage = writer.store
    writer.store = None  # keep it open for the test; the writer must not close it
    await asyncio.to_thread(writer.stop, 0)
    jobs.usage_log.close_thread_connection()
    await jobs.close()
    return Paths(usage, objects, tmp_path, [r.request_id for r in records])


def mutate(usage: ClickHouseUsageStore, sql: str) -> None:
    usage.rows(sql + " SETTINGS mutations_sync = 2")


def test_a_clean_window_reconciles_with_zero_deltas(paths: Paths) -> None:
    run = reconcile(paths.usage, paths.objects, paths.window())
    assert run.status == "reconciled" and run.error is None
    assert (run.hot_requests, run.cold_requests) == (N, N)
    assert run.hot_gpu_seconds == pytest.approx(run.cold_gpu_seconds, abs=1e-9)
    assert run.keys == [] and not any(run.counts.values())


def test_an_event_deleted_from_clickhouse_is_named(paths: Paths) -> None:
    victim = paths.request_ids[7]
    mutate(paths.usage, f"ALTER TABLE inference_events DELETE WHERE request_id = '{victim}'")
    run = reconcile(paths.usage, paths.objects, paths.window())
    assert run.status == "discrepancies"
    assert run.missing_in_hot == [victim] and run.counts["missing_in_hot"] == 1
    assert [(k.customer_id, k.delta_requests) for k in run.keys] == [("c1", -1)]
    assert run.missing_in_cold == [] and run.gpu_mismatches == []


class StoreInFront:
    """The real store, every call passed through; a subclass changes ``get``."""

    def __init__(self, store: ObjectStore) -> None:
        self.store, self.url = store, store.url

    def put_new(self, key: str, data: bytes) -> bool:
        return self.store.put_new(key, data)

    def get(self, key: str) -> bytes:
        return self.store.get(key)

    def exists(self, key: str) -> bool:
        return self.store.exists(key)

    def list(self, prefix: str) -> list[str]:
        return self.store.list(prefix)


class CountedGets(StoreInFront):
    """The real store, with the keys of the batches read (not the leaves) written down."""

    def __init__(self, store: ObjectStore) -> None:
        super().__init__(store)
        self.batches = list[str]()

    def get(self, key: str) -> bytes:
        if not key.startswith(LEAVES_PREFIX):
            self.batches.append(key)
        return self.store.get(key)


def test_the_drill_down_reads_again_only_the_batches_near_the_faulty_request(
    many: Paths,
) -> None:
    victim = many.request_ids[155]  # in batch 15 of 30
    mutate(many.usage, f"ALTER TABLE inference_events DELETE WHERE request_id = '{victim}'")
    spy = CountedGets(many.objects)
    run = reconcile(many.usage, spy, many.window())
    assert run.status == "discrepancies" and run.missing_in_hot == [victim]
    assert run.missing_in_cold == [] and run.gpu_mismatches == [] and run.duplicated_in_hot == []
    cas = ContentStore(many.objects)
    leaves = [BatchLeaf.decode(many.objects.get(leaf_key(i))) for i in range(MANY // 10)]
    batch_of = {cas.key_of(leaf.batch_blake3): leaf.index for leaf in leaves}
    totals, again = spy.batches[: len(leaves)], spy.batches[len(leaves) :]
    assert sorted(batch_of[k] for k in totals) == list(range(len(leaves)))  # each once
    # The drill-down: the events of the victim's cell (its batch, maybe a neighbour whose time
    # meets that cell), then the request id from the batch that holds it.
    assert 15 in {batch_of[k] for k in again} and len(again) <= 3
    assert {batch_of[k] for k in again} <= {14, 15, 16}


def test_groups_of_batches_reuse_the_private_copies_without_mixing_them(
    many: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30 batches scanned 4 at a time: each group's copies overwrite those of two groups back
    (the same slots, the same paths), and a stale byte or a batch number from the wrong slot
    would change a total or name the wrong request."""
    monkeypatch.setattr(reconcile_module, "_SCAN_BATCHES", 4)
    clean = reconcile(many.usage, many.objects, many.window())
    assert clean.status == "reconciled" and clean.cold_requests == MANY
    victims = [many.request_ids[i] for i in (3, 155, 297)]  # batches 0, 15 and 29
    names = ", ".join(f"'{v}'" for v in victims)
    mutate(many.usage, f"ALTER TABLE inference_events DELETE WHERE request_id IN ({names})")
    run = reconcile(many.usage, many.objects, many.window())
    assert run.status == "discrepancies" and run.missing_in_hot == sorted(victims)
    assert run.missing_in_cold == [] and run.gpu_mismatches == [] and run.duplicated_in_hot == []


class SwappedAfterRead(StoreInFront):
    """The real store; each batch, once read, is replaced at rest by another batch's bytes (a
    valid Parquet file with other rows), as if swapped between the hash and the parse."""

    def __init__(self, store: ObjectStore, root: Path) -> None:
        super().__init__(store)
        self.root = root
        files = sorted(p for p in (root / "blobs").rglob("*") if p.is_file())
        # each batch's replacement: the next one's original bytes (cyclically)
        self.replacement = {
            f.relative_to(root).as_posix(): files[(i + 1) % len(files)].read_bytes()
            for i, f in enumerate(files)
        }

    def get(self, key: str) -> bytes:
        data = self.store.get(key)
        if key in self.replacement:
            (self.root / key).write_bytes(self.replacement[key])
        return data


def test_a_batch_altered_between_the_totals_and_the_drill_down_is_named(paths: Paths) -> None:
    """The totals' pass reads every batch as attested (each then swapped at rest); the
    drill-down into a differing key reads the victim's batch again, now altered: it is named,
    and the run says discrepancies (its records show up as missing from the cold side)."""
    victim = paths.request_ids[25]  # batch 2
    mutate(paths.usage, f"ALTER TABLE inference_events DELETE WHERE request_id = '{victim}'")
    run = reconcile(paths.usage, SwappedAfterRead(paths.objects, paths.data / "cas"),
                    paths.window())  # fmt: skip
    assert run.status == "discrepancies"
    assert any(name.startswith("leaf 2 ") for name in run.unreadable_batches), run
    assert all("does not hash to its key" in name for name in run.unreadable_batches)


def test_duckdb_parses_the_bytes_that_were_hashed_not_the_file_after(paths: Paths) -> None:
    """Every batch file is swapped for another right after it is read: reconcile reads its
    private copy of the verified bytes, so the totals are still those of the attested rows."""
    run = reconcile(paths.usage, SwappedAfterRead(paths.objects, paths.data / "cas"),
                    paths.window())  # fmt: skip
    assert run.status == "reconciled" and run.cold_requests == N
    # and the files at rest were in fact altered: read again, every batch is refused
    again = reconcile(paths.usage, paths.objects, paths.window())
    assert again.status == "discrepancies" and len(again.unreadable_batches) == N // 10


def test_scan_groups_are_bounded_by_batches_and_by_records() -> None:
    """Whatever the batches' size, a group of copies holds at most _SCAN_RECORDS records
    (but for a batch larger than that, alone) and _SCAN_BATCHES batches, in log order."""

    def leaf(index: int, count: int) -> BatchLeaf:
        return BatchLeaf(index, "0" * 64, "0" * 64, count, 0.0, 0, 0, 0, 0, index)

    small = [leaf(i, 10_000) for i in range(130)]
    assert [len(g) for g in reconcile_module._groups(small)] == [64, 64, 2]
    big = [leaf(0, 300_000), leaf(1, 300_000), leaf(2, 300_000), leaf(3, 5_000_000), leaf(4, 1)]
    groups = reconcile_module._groups(big)
    assert [[x.index for x in g] for g in groups] == [[0, 1], [2], [3], [4]]
    assert reconcile_module._groups([]) == []


def test_an_event_duplicated_in_clickhouse_is_named(paths: Paths) -> None:
    victim = paths.request_ids[4]
    [(event_id,)] = paths.usage.rows(
        "SELECT toString(event_id) FROM inference_events WHERE request_id = {r:String}",
        {"r": victim},
    )
    again = signed_record(4, 0.29, customer="c0").to_dict()
    again["event_id"] = event_id
    paths.usage.insert(records_to_table([again]), dedup_token="a different batch")
    run = reconcile(paths.usage, paths.objects, paths.window())
    assert run.status == "discrepancies"
    assert run.duplicated_in_hot == [victim]
    assert run.hot_requests == N + 1 and run.missing_in_hot == []


def test_altered_gpu_seconds_in_clickhouse_are_named(paths: Paths) -> None:
    victim = paths.request_ids[12]
    mutate(
        paths.usage,
        f"ALTER TABLE inference_events UPDATE gpu_seconds = 99.5 WHERE request_id = '{victim}'",
    )
    run = reconcile(paths.usage, paths.objects, paths.window())
    assert run.status == "discrepancies"
    assert [(r, h) for r, h, _ in run.gpu_mismatches] == [(victim, 99.5)]
    assert run.gpu_mismatches[0][2] == pytest.approx(0.37)


def test_a_batch_missing_from_cas_is_named_with_its_requests(paths: Paths) -> None:
    leaf = BatchLeaf.decode(paths.objects.get(leaf_key(1)))
    (paths.data / "cas" / ContentStore(paths.objects).key_of(leaf.batch_blake3)).unlink()
    run = reconcile(paths.usage, paths.objects, paths.window())
    assert run.status == "discrepancies"
    assert len(run.unreadable_batches) == 1 and "leaf 1" in run.unreadable_batches[0]
    assert run.missing_in_cold == sorted(paths.request_ids[10:20])


def test_an_unreachable_side_is_an_error_not_a_success(paths: Paths) -> None:
    paths.usage.rows("DETACH TABLE inference_events")
    try:
        run = reconcile(paths.usage, paths.objects, paths.window())
    finally:
        paths.usage.rows("ATTACH TABLE inference_events")
    assert run.status == "error" and "hot path" in (run.error or "")
    unreachable = open_object_store(
        "s3://no-such-bucket/prefix", endpoint="http://127.0.0.1:9", region="us-east-1",
        allow_http=True, access_key_id="x", secret_access_key="x",
    )  # fmt: skip
    run = reconcile(paths.usage, unreachable, paths.window())
    assert run.status == "error" and "cold path" in (run.error or "")


def test_repair_brings_a_damaged_window_back(paths: Paths) -> None:
    victims = paths.request_ids[20:23]
    names = ", ".join(f"'{v}'" for v in victims)
    mutate(paths.usage, f"ALTER TABLE inference_events DELETE WHERE request_id IN ({names})")
    damaged = reconcile(paths.usage, paths.objects, paths.window(), repair=True)
    assert damaged.status == "discrepancies" and damaged.repaired == 3
    assert damaged.missing_in_hot == sorted(victims)
    after = reconcile(paths.usage, paths.objects, paths.window())
    assert after.status == "reconciled" and after.keys == []
    # The rollups are fed on insert: the DELETE above (a mutation) never reached them, so they
    # held the 3 events all along and the repair's insert adds them again there. A record that
    # never reached ClickHouse (the real failure: a lost insert) is missing from both, and the
    # repair makes both right; docs/OPERATIONS.md says so.
    ((rolled,),) = paths.usage.rows("SELECT sum(requests) FROM metrics_1m")
    assert rolled == N + 3


def test_a_difference_within_the_threshold_still_names_the_request(paths: Paths) -> None:
    victim = paths.request_ids[3]
    mutate(paths.usage, f"ALTER TABLE inference_events DELETE WHERE request_id = '{victim}'")
    run = reconcile(paths.usage, paths.objects, paths.window(), threshold=0.5)
    assert run.status == "reconciled"  # 1 of 20 for that key is within 50 %
    assert run.missing_in_hot == [victim]  # but the request is still named


def test_records_outside_the_window_are_not_compared(paths: Paths) -> None:
    past = TimeRange(datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 2, tzinfo=UTC))
    run = reconcile(paths.usage, paths.objects, past)
    assert run.status == "reconciled" and run.hot_requests == run.cold_requests == 0


def test_runs_are_recorded_in_clickhouse_and_as_a_signed_chain(paths: Paths) -> None:
    signer = load_signer(paths.data, ORIGIN)
    for _ in range(3):
        started = datetime.now(UTC)
        record_run(reconcile(paths.usage, paths.objects, paths.window()), started, paths.usage,
                   paths.objects, signer)  # fmt: skip
    runs = recent_runs(paths.usage, 10)
    assert [r["status"] for r in runs] == ["reconciled"] * 3
    entries, problems = verify_runs(paths.objects, [signer.verifier()])
    assert problems == [] and [e.summary["status"] for e in entries] == ["reconciled"] * 3
    assert verify_log(paths.objects, [signer.verifier()], ORIGIN).reconciliations == 3
    # History is tamper-evident: remove the middle entry, then forge the last one.
    (paths.data / "cas" / f"{RUNS_PREFIX}{1:020d}").unlink()
    _, problems = verify_runs(paths.objects, [signer.verifier()])
    assert any("does not follow the entry before it" in p for p in problems)
    last = paths.data / "cas" / f"{RUNS_PREFIX}{2:020d}"
    last.write_bytes(last.read_bytes().replace(b"reconciled", b"reconciles"))
    report = verify_log(paths.objects, [signer.verifier()], ORIGIN)
    assert any(f.where == "reconciliation entry 1" and "does not verify" in f.what
               for f in report.findings)  # fmt: skip


async def test_the_reconciler_alerts_through_the_webhook(paths: Paths) -> None:
    received: list[dict[str, object]] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    # The receiver is on 127.0.0.1 over http: the alert opts in, as a test config must.
    local = UrlPolicy(allow_http=True, allow_private_addresses=True)
    sender = WebhookSender(WebhookSecret.generate(), local)
    config = ReconcileConfig(alert_webhook=f"http://127.0.0.1:{port}/alerts")
    reconciler = Reconciler(config, lambda: paths.usage, paths.objects,
                            load_signer(paths.data, ORIGIN), sender)  # fmt: skip
    clean = await reconciler.run(paths.window())
    assert clean.status == "reconciled" and not received
    victim = paths.request_ids[9]
    mutate(paths.usage, f"ALTER TABLE inference_events DELETE WHERE request_id = '{victim}'")
    run = await reconciler.run(paths.window())
    await asyncio.wait_for(arrived.wait(), 10)
    await sender.drain(5)
    await sender.close()
    await runner.cleanup()
    assert run.status == "discrepancies" and reconciler.state.last_discrepancies == 2
    assert received[0]["type"] == "reconciliation.discrepancies"
    assert received[0]["data"]["missing_in_hot"] == [victim]  # type: ignore[index]
    assert reconciler.state.runs == 2 and reconciler.state.last_status == "discrepancies"

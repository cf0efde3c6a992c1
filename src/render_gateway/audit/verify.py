"""Offline verification of the audit log: from the stored objects and the log's public key(s)
alone, re-derive everything and name every way in which it does not hold."""

from __future__ import annotations

import base64
import math
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from render_gateway.audit.attestations import read_batch, table_records_root
from render_gateway.audit.cas import ContentStore, IntegrityError
from render_gateway.audit.claim_windows import CLAIM_COLUMN_NAMES, ClaimColumns, WindowClaims
from render_gateway.audit.leaves import (
    CHECKPOINTS_PREFIX,
    LEAVES_PREFIX,
    BatchLeaf,
    LeafError,
    index_of,
)
from render_gateway.audit.merkle import MerkleLog
from render_gateway.audit.node_keys import NodeKey, recorded_node_keys
from render_gateway.audit.run_chain import verify_runs
from render_gateway.audit.signed_note import Checkpoint, NoteError, NoteVerifier, open_note
from render_gateway.signing_keys import key_id as node_key_id
from render_gateway.stores.objects import ObjectMissing, ObjectStore, open_object_store
from render_gateway.usage_claim import InvalidClaim, SignedClaim, claim_fields, verify_claim


@dataclass(frozen=True)
class Finding:
    where: str  # e.g. "leaf 3 (batch 9f2c…)", "checkpoint 12", "batch 4 record 17 (req_…)"
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class Report:
    leaves: int = 0
    records: int = 0
    gpu_seconds: float = 0.0
    checkpoints: int = 0
    unclaimed: int = 0  # records without a backend claim (backends that sign nothing)
    # Records whose claim the gateway could not verify when the request settled, and why: their
    # GPU-seconds rest on the log key alone (counted and listed, not failed).
    unverified: list[Finding] = field(default_factory=list)
    claims_checked: bool = True
    node_keys: list[NodeKey] = field(default_factory=list)  # as the log's signed notes record
    pinned: bool = False  # claims were held to --node-keys, not to the log's own notes
    reconciliations: int = 0  # signed reconciliation entries, chained
    latest: Checkpoint | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def fail(self, where: str, what: str) -> None:
        self.findings.append(Finding(where, what))


def verify_log(
    objects: ObjectStore,
    verifiers: Sequence[NoteVerifier],
    origin: str | None = None,
    trusted: Checkpoint | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    check_claims: bool = True,
    pinned: Mapping[str, str] | None = None,
    allow_empty: bool = False,
    workers: int | None = None,
) -> Report:
    """Everything verify checks; ``check_claims=False`` skips the backends' per-record Ed25519
    signatures (the slow part), checking only the log's own structure and hashes. ``pinned``
    (key id → base64 node key) are the only node keys a claim may be signed by; without it, a
    claim's key must be one the log recorded in a signed node key note (trust on first use).
    A store with nothing in it fails unless ``allow_empty``. ``workers``: processes that check
    batches (None: every core for a large log in a local store — POOL_MIN_RECORDS — else this
    process alone)."""
    report = Report(claims_checked=check_claims, pinned=pinned is not None)
    leaves = _load_leaves(objects, report)
    tree = MerkleLog(leaf.hash for leaf in leaves)
    report.leaves = tree.size
    report.node_keys, note_problems = recorded_node_keys(objects, verifiers)
    for where, what in note_problems:
        report.fail(where, what)
    anchors = AnchorKeys(
        set(pinned.values()) if pinned is not None else {k.public_key for k in report.node_keys},
        "a pinned node key (--node-keys)" if pinned is not None else "recorded by the log",
    )
    _check_batches(objects, leaves, report, progress, anchors, workers)
    _check_checkpoints(objects, verifiers, origin, tree, leaves, report)
    if not tree.size and not report.checkpoints and not allow_empty:
        report.fail("log", f"nothing to verify: no leaves and no checkpoints in {objects.url}")
    if trusted is not None:
        _check_trusted(trusted, tree, report)
    entries, problems = verify_runs(objects, list(verifiers))
    report.reconciliations = len(entries)
    for problem in problems:
        where, _, what = problem.partition(": ")
        report.fail(where, what)
    return report


def _load_leaves(objects: ObjectStore, report: Report) -> list[BatchLeaf]:
    """Leaves in index order; gaps, misplaced, replayed or malformed leaves are findings."""
    leaves: list[BatchLeaf] = []
    seen_batches: dict[str, int] = {}
    for position, key in enumerate(objects.list(LEAVES_PREFIX)):
        where = f"leaf {key.removeprefix(LEAVES_PREFIX)}"
        try:
            index = index_of(key, LEAVES_PREFIX)
            leaf = BatchLeaf.decode(objects.get(key))
        except (ValueError, LeafError) as exc:
            report.fail(where, f"not a valid leaf: {exc}")
            continue
        if index != position:
            report.fail(where, f"expected leaf {position} here: a leaf is missing before it")
        if leaf.index != index:
            report.fail(where, f"holds leaf {leaf.index}: leaves were reordered or copied")
        if (first := seen_batches.get(leaf.batch_blake3)) is not None:
            report.fail(where, f"replays batch {leaf.batch_blake3[:16]}… of leaf {first}")
        seen_batches.setdefault(leaf.batch_blake3, leaf.index)
        if leaves:
            previous = leaves[-1]
            if leaf.timestamp_us <= previous.timestamp_us:
                report.fail(where, "its timestamp does not increase along the log")
            if leaf.first_usage_seq != previous.last_usage_seq + 1:
                report.fail(
                    where,
                    f"holds usage records from {leaf.first_usage_seq}, but the previous leaf "
                    f"ended at {previous.last_usage_seq}: records replayed, reordered or missing",
                )
        leaves.append(leaf)
    return leaves


@dataclass(frozen=True)
class AnchorKeys:
    """The node keys a claim may be signed by (base64), and what makes them trusted."""

    public_keys: set[str]
    source: str  # for the finding: "… which is not <source>"


# A log this large (records), in a local store, is checked on every core by default: below it,
# starting and stopping the processes (each imports the CLI and pyarrow) costs more than it
# saves. A record costs ~20-25 µs with its claim in a window, ~150-210 µs signed alone (Ed25519),
# ~5-6 µs with --skip-claims. On the 2-core development machine the pool breaks even at 200,000
# windowed records (the CLI: 7.1-7.9 s with one process, 7.1-7.7 s with two; larger logs were
# not measured): docs/BENCHMARKS.md.
POOL_MIN_RECORDS = {True: 200_000, False: 2_000_000}  # by check_claims


@dataclass
class BatchCheck:
    """What checking one batch found: plain values, so a worker process can return it."""

    records: int = 0
    gpu_seconds: float = 0.0
    unclaimed: int = 0
    unverified: list[tuple[str, str]] = field(default_factory=list)
    findings: list[tuple[str, str]] = field(default_factory=list)
    read: bool = False  # the batch was read (its records count)


def _check_batches(
    objects: ObjectStore,
    leaves: Sequence[BatchLeaf],
    report: Report,
    progress: Callable[[int, int], None],
    anchors: AnchorKeys,
    workers: int | None,
) -> None:
    if workers is None:
        local = objects.url.startswith("file:")
        big = sum(leaf.count for leaf in leaves) >= POOL_MIN_RECORDS[report.claims_checked]
        workers = len(os.sched_getaffinity(0)) if local and big else 1
    workers = max(1, min(workers, len(leaves)))
    if workers == 1:
        cas, node_keys = ContentStore(objects), NodeKeyCache()
        windows = WindowClaims()  # each window's statement verified once per run
        results = (
            _check_batch(cas, leaf, report.claims_checked, anchors, node_keys, windows)
            for leaf in leaves
        )
        for done, result in enumerate(results):
            _merge(report, result)
            progress(done + 1, len(leaves))
        return
    # Batches are independent: contiguous runs of leaves go to worker processes as plain values
    # (the store's URL, the leaves' bytes) and come back as BatchChecks, merged in log order.
    # Spawned, not forked: verify also runs inside the gateway, whose threads a fork would copy.
    per_run = max(1, len(leaves) // (4 * workers))  # a few runs per worker, to even them out
    runs = [leaves[at : at + per_run] for at in range(0, len(leaves), per_run)]
    done = 0
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        tasks = [
            (objects.url, [leaf.encode() for leaf in run], report.claims_checked,
             sorted(anchors.public_keys), anchors.source)
            for run in runs
        ]  # fmt: skip
        for checks in pool.map(_check_run, *zip(*tasks, strict=True)):
            for result in checks:
                _merge(report, result)
                done += 1
                progress(done, len(leaves))


def _check_run(
    url: str, encoded: list[bytes], check_claims: bool, public_keys: list[str], source: str
) -> list[BatchCheck]:
    """A worker process's share: these leaves' batches, from the store at ``url``."""
    cas = ContentStore(open_object_store(url, create=False))
    anchors = AnchorKeys(set(public_keys), source)
    node_keys: NodeKeyCache = {}
    windows = WindowClaims()  # each window's statement verified once per process
    leaves = [BatchLeaf.decode(data) for data in encoded]
    return [_check_batch(cas, leaf, check_claims, anchors, node_keys, windows) for leaf in leaves]


def _merge(report: Report, result: BatchCheck) -> None:
    report.unclaimed += result.unclaimed
    report.unverified += [Finding(where, what) for where, what in result.unverified]
    for where, what in result.findings:
        report.fail(where, what)
    report.records += result.records
    report.gpu_seconds += result.gpu_seconds


def _check_batch(
    cas: ContentStore,
    leaf: BatchLeaf,
    check_claims: bool,
    anchors: AnchorKeys,
    node_keys: NodeKeyCache,
    windows: WindowClaims,
) -> BatchCheck:
    """Re-hash one batch and check it against its leaf, from its Arrow columns: rows become
    Python mappings only for the claims pass, and only the rows with a claim to check."""
    where = f"leaf {leaf.index} (batch {leaf.batch_blake3[:16]}…)"
    result = BatchCheck()
    try:
        table = read_batch(cas.get(leaf.batch_blake3), leaf.version)
    except IntegrityError:
        result.findings.append((where, "the batch's bytes do not match its hash (altered)"))
        return result
    except ObjectMissing:
        result.findings.append((where, "the batch is missing from the store (deleted)"))
        return result
    except ValueError as exc:
        result.findings.append((where, f"the batch cannot be read: {exc}"))
        return result
    fail = result.findings.append
    result.read = True
    count = table.num_rows
    seconds = table.column("gpu_seconds")
    if seconds.null_count:
        fail((where, f"{seconds.null_count} of its records have no GPU-seconds"))
    gpu_seconds = math.fsum(value for value in seconds.to_pylist() if value is not None)
    if count != leaf.count:
        fail((where, f"holds {count} records, its leaf says {leaf.count}"))
    if table_records_root(table, leaf.version).hex() != leaf.records_root:
        fail((where, "its records do not hash to the leaf's records root"))
    if not math.isclose(gpu_seconds, leaf.gpu_seconds, rel_tol=1e-12, abs_tol=1e-9):
        fail((where, f"sums to {gpu_seconds} GPU-seconds, its leaf says {leaf.gpu_seconds}"))
    seqs = table.column("usage_seq")
    expected = np.arange(leaf.first_usage_seq, leaf.last_usage_seq + 1, dtype=np.int64)
    if seqs.null_count or not np.array_equal(seqs.to_numpy(), expected):
        fail((where, "its usage records are not the leaf's contiguous range"))
    payload, settle_error = table.column("claim_payload"), table.column("claim_error")
    result.unclaimed = payload.null_count
    signed = pc.is_valid(payload)
    unverified = np.flatnonzero(pc.and_(signed, pc.is_valid(settle_error)).to_numpy(False))
    if len(unverified):
        picked = table.select(["request_id", "claim_error"]).take(pa.array(unverified))
        for position, row in zip(unverified.tolist(), picked.to_pylist(), strict=True):
            result.unverified.append(
                (f"{where} record {position} ({row['request_id']})", row["claim_error"])
            )
    if check_claims:
        checked = np.flatnonzero(pc.and_(signed, pc.is_null(settle_error)).to_numpy(False))
        if len(checked):
            _check_claims(table, checked, count, where, anchors, node_keys, windows, fail)
    result.records, result.gpu_seconds = count, gpu_seconds
    return result


# A node key as rows spell it (base64) → the key, its raw bytes and its key id: parsed once.
NodeKeyCache = dict[str, tuple[Ed25519PublicKey, bytes, str]]


def _node_key(public: str, node_keys: NodeKeyCache) -> tuple[Ed25519PublicKey, bytes, str]:
    """ValueError for a key that is not base64 of an Ed25519 public key."""
    parsed = node_keys.get(public)
    if parsed is None:
        raw = base64.b64decode(public, validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
        parsed = node_keys[public] = (key, raw, node_key_id(key))
    return parsed


def _check_claims(
    table: pa.Table,
    checked: np.ndarray[Any, np.dtype[np.intp]],
    count: int,
    where: str,
    anchors: AnchorKeys,
    node_keys: NodeKeyCache,
    windows: WindowClaims,
    fail: Callable[[tuple[str, str]], None],
) -> None:
    """Every claim of ``checked`` (row positions) checked, from the columns a check reads,
    each made a Python list at once (a third of the row; no mapping per row)."""
    names = table.schema.names
    table = table.select([name for name in CLAIM_COLUMN_NAMES if name in names])
    if len(checked) < count:
        table = table.take(pa.array(checked, pa.int64()))  # the 8 columns only, not all 28
    nothing = [None] * table.num_rows  # version 1 has no claim_window
    columns = ClaimColumns(*(
        table.column(name).to_pylist() if name in names else nothing
        for name in CLAIM_COLUMN_NAMES
    ))  # fmt: skip
    # The batch's whole windows at once (each claim's own fields are still checked below).
    proven = windows.prove_batch(columns, lambda public: _node_key(public, node_keys))
    rows = enumerate(columns.rows())
    for at, (request_id, seconds, payload, signature, public, key_id, error, window) in rows:
        problem = _claim_problem(request_id, seconds, payload, signature, public, key_id, error,
                                 window, node_keys, windows, at in proven)  # fmt: skip
        if problem is None and public not in anchors.public_keys:
            problem = f"the claim is signed by node key {key_id}, which is not {anchors.source}"
        if problem:
            fail((f"{where} record {int(checked[at])} ({request_id})", problem))


def claim_problem(row: Mapping[str, Any], node_keys: NodeKeyCache) -> str | None:
    """Why the row's backend claim does not hold (None when it holds or there is none).
    ``node_keys`` carries the node keys already parsed."""
    return _claim_problem(
        row["request_id"], row["gpu_seconds"], row["claim_payload"], row["claim_signature"],
        row["node_public_key"], row["node_key_id"], row.get("claim_error"),
        row.get("claim_window"),
        node_keys,
    )  # fmt: skip


def _claim_problem(
    request_id: str,
    gpu_seconds: float,
    claim_payload: str | None,
    claim_signature: str | None,
    public_key: str | None,
    claimed_key_id: str | None,
    claim_error: str | None,
    window: str | None,
    node_keys: NodeKeyCache,
    windows: WindowClaims | None = None,
    proven: bool = False,
) -> str | None:
    """claim_problem over a row's fields. ``windows`` carries the window statements whose
    signature verified in this run (a window claim then costs its inclusion proof, not an
    Ed25519 verification); ``proven``: WindowClaims.prove_batch proved this row's claim a
    member of its window."""
    if claim_payload is None:
        return None  # a backend that signs nothing (a plain Triton model): counted, not failed
    if claim_error is not None:
        return f"the gateway could not verify the claim when the request settled: {claim_error}"
    if claim_signature is None or public_key is None:
        return "the backend's claim has no signature or no node key to check it with"
    try:
        key, raw, key_id = _node_key(public_key, node_keys)
        if key_id != claimed_key_id:
            return "the node key does not match the claim's key id"
        payload = claim_payload.encode()
        if window is None:  # signed directly (Ed25519 over the payload)
            signed = SignedClaim(payload, base64.b64decode(claim_signature, validate=True),
                                 key_id)  # fmt: skip
            claim = vars(verify_claim(signed, key))
        else:  # Ed25519-window: in its window, whose statement the key signed
            if not proven:
                (windows or WindowClaims()).check(key, raw, key_id, payload, window,
                                                  claim_signature)  # fmt: skip
            claim = claim_fields(payload)
            if claim["key_id"] != key_id:
                raise InvalidClaim("claim payload names a different key than its envelope")
    except (InvalidClaim, ValueError) as exc:
        return f"the backend's claim does not verify: {exc}"
    if claim["request_id"] != request_id:
        return f"the claim is for request {claim['request_id']}, not this one"
    claimed = claim["gpu_seconds"]
    if not math.isclose(claimed, gpu_seconds, rel_tol=1e-9, abs_tol=1e-9):
        return f"records {gpu_seconds} GPU-seconds, the backend claimed {claimed}"
    return None


def _check_checkpoints(
    objects: ObjectStore,
    verifiers: Sequence[NoteVerifier],
    origin: str | None,
    tree: MerkleLog,
    leaves: Sequence[BatchLeaf],
    report: Report,
) -> None:
    keys = objects.list(CHECKPOINTS_PREFIX)
    previous: Checkpoint | None = None
    matched = 0  # the largest signed size whose root the stored leaves still reproduce
    rewritten: list[int] = []  # signed sizes whose roots they do not
    for key in keys:
        where = f"checkpoint {key.removeprefix(CHECKPOINTS_PREFIX).lstrip('0') or '0'}"
        try:
            size = index_of(key, CHECKPOINTS_PREFIX)
            text, _ = open_note(objects.get(key), verifiers)
            checkpoint = Checkpoint.parse(text)
        except (NoteError, ValueError) as exc:
            report.fail(where, f"does not verify: {exc}")
            continue
        report.checkpoints += 1
        if checkpoint.size != size:
            report.fail(where, f"is stored as size {size} but signs size {checkpoint.size}")
        if origin is not None and checkpoint.origin != origin:
            report.fail(where, f"is for log {checkpoint.origin!r}, not {origin!r}")
        if checkpoint.size > tree.size:
            report.fail(
                where,
                f"signs {checkpoint.size} leaves but the log has {tree.size}: truncated",
            )
        elif tree.root_at(checkpoint.size) != checkpoint.root_hash:
            rewritten.append(checkpoint.size)
        elif not rewritten:
            matched = max(matched, checkpoint.size)
        if previous is not None and checkpoint.size <= previous.size:
            report.fail(where, "does not grow the log")
        previous = checkpoint
    if rewritten:
        _locate_rewrite(matched, rewritten, leaves, report)
    report.latest = previous
    if previous is None and tree.size:
        report.fail("log", "no signed checkpoint covers it")
    elif previous is not None and previous.size < tree.size:
        report.fail("log", f"{tree.size - previous.size} leaves are not covered by a checkpoint")


def _locate_rewrite(
    matched: int, rewritten: Sequence[int], leaves: Sequence[BatchLeaf], report: Report
) -> None:
    """Name the leaf that changed: the checkpoints sign every prefix of the log, so the first
    leaf changed after signing lies between the largest size that still matches and the
    smallest that does not (one leaf when a checkpoint was signed after every append)."""
    first_bad = min(size for size in rewritten if size > matched)
    if first_bad - matched == 1 and matched < len(leaves):
        leaf = leaves[matched]
        report.fail(
            f"leaf {leaf.index} (batch {leaf.batch_blake3[:16]}…)",
            f"changed after checkpoint {first_bad} signed it: this leaf, or the batch it names "
            f"(BLAKE3 {leaf.batch_blake3}), is not the one the log signed (log rewritten)",
        )
    else:
        report.fail(
            f"leaves {matched}…{first_bad - 1}",
            f"one of them changed after checkpoint {first_bad} signed it (log rewritten)",
        )
    report.fail(
        _sizes("checkpoint", rewritten),
        "their roots do not match the log's leaves (log rewritten from the leaf above)",
    )


def _sizes(what: str, sizes: Sequence[int]) -> str:
    return f"{what} {sizes[0]}" if len(sizes) == 1 else f"{what}s {sizes[0]}…{sizes[-1]}"


def _check_trusted(trusted: Checkpoint, tree: MerkleLog, report: Report) -> None:
    if trusted.size > tree.size:
        report.fail(
            "trusted checkpoint",
            f"has {trusted.size} leaves, the log only {tree.size}: rolled back or truncated",
        )
    elif tree.root_at(trusted.size) != trusted.root_hash:
        report.fail("trusted checkpoint", "the log is not an extension of it (forked)")

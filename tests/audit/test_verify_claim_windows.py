"""Offline verification of window-signed claims (``Ed25519-window``) in a real log: a clean log
verifies (through the real CLI too) with one Ed25519 verification per window, and every way of
forging or moving a window claim — by someone who holds the log key, so that only the claim
check can catch it — fails, naming the record and its request."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.audit import claim_windows
from render_gateway.audit.keys import load_signer
from render_gateway.audit.merkle import leaf_hash
from render_gateway.audit.verify import Report, verify_log
from render_gateway.signing_keys import key_id
from render_gateway.stores.objects import open_object_store
from render_gateway.usage_claim import UsageClaim, sign_window, window_statement

from support.audit_fixtures import (
    NODE_KEYS,
    NODE_PUBLIC_KEY,
    signed_record,
    window_signed_records,
)
from support.audit_store import (
    ORIGIN,
    batch_rows,
    build_log_of,
    resign_checkpoints,
    restore_batch,
    verify,
)

ATTACKER = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
WINDOW = 4  # 19 records in windows of 4: windows straddle the batches of 5


@pytest.fixture(scope="module")
def pristine_windows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("windows")
    asyncio.run(build_log_of(data, window_signed_records(range(19), WINDOW), batch_records=5))
    return data


@pytest.fixture
def windows(pristine_windows: Path, tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "data"
    shutil.copytree(pristine_windows, copy)
    yield copy


def run_verify(data: Path, pinned: dict[str, str] | None = None) -> Report:
    objects = open_object_store((data / "cas").as_uri())
    return verify_log(objects, [load_signer(data, ORIGIN).verifier()], ORIGIN, pinned=pinned)


def tamper(
    data: Path, leaf_index: int, row_index: int, edit: Callable[[dict[str, Any]], None]
) -> str:
    """Edit one row, re-store its batch and re-sign the checkpoints (the log key's holder);
    the row's request id."""
    leaf, rows = batch_rows(data, leaf_index)
    edit(rows[row_index])
    restore_batch(data, leaf, rows)
    resign_checkpoints(data)
    return str(rows[row_index]["request_id"])


def only_finding(report: Report, leaf_index: int, row_index: int, request_id: str) -> str:
    assert len(report.findings) == 1, report.findings
    [finding] = report.findings
    assert finding.where.startswith(f"leaf {leaf_index} (batch ")
    assert finding.where.endswith(f"record {row_index} ({request_id})")
    return finding.what


def test_a_log_of_window_claims_verifies_with_one_ed25519_verify_per_window(
    windows: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[claim_windows.WindowClaims] = []
    real = claim_windows.WindowClaims

    def recording() -> claim_windows.WindowClaims:
        made.append(real())
        return made[-1]

    monkeypatch.setattr("render_gateway.audit.verify.WindowClaims", recording)
    report = run_verify(windows)
    assert report.ok, report.findings
    assert report.records == 19 and report.unclaimed == 0 and not report.unverified
    [checker] = made
    assert checker.statements_verified == 5  # windows of 4, 4, 4, 4 and 3 claims
    _, rows = batch_rows(windows, 0)
    window = orjson.loads(rows[0]["claim_window"])
    assert set(window) == {"index", "path", "root", "size"} and window["size"] == WINDOW
    assert [orjson.loads(row["claim_window"])["index"] for row in rows] == [0, 1, 2, 3, 0]


def test_windows_a_batch_holds_whole_are_proven_at_once_and_only_the_split_ones_one_by_one(
    windows: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch pass (WindowClaims.prove_batch) is what spares the per-claim check: with it
    broken, verification would still hold, only slower, so this counts the per-claim checks."""
    checks: list[int] = []
    real_check = claim_windows.WindowClaims.check

    def counted(self: claim_windows.WindowClaims, *args: Any) -> None:
        checks.append(1)
        real_check(self, *args)

    monkeypatch.setattr(claim_windows.WindowClaims, "check", counted)
    whole = tmp_path / "whole"
    asyncio.run(build_log_of(whole, window_signed_records(range(16), WINDOW), batch_records=8))
    report = run_verify(whole)
    assert report.ok and report.records == 16, report.findings
    assert checks == []  # two whole windows in each batch: no claim checked on its own
    report = run_verify(windows)  # windows of 4 across batches of 5: most are split
    assert report.ok and report.records == 19, report.findings
    assert 0 < len(checks) < 19


def test_the_cli_verifies_a_log_of_window_claims(windows: Path) -> None:
    result = verify(windows)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_claim_moved_into_another_window_fails(windows: Path) -> None:
    _, rows = batch_rows(windows, 1)
    other = rows[4]  # record 9, of the third window (8-11); record 5 is of the second (4-7)
    request_id = tamper(windows, 1, 0, lambda row: row.update(
        claim_window=other["claim_window"], claim_signature=other["claim_signature"]))  # fmt: skip
    what = only_finding(run_verify(windows), 1, 0, request_id)
    assert "not in its window" in what


def test_a_wrong_path_fails(windows: Path) -> None:
    def edit(row: dict[str, Any]) -> None:
        window = orjson.loads(row["claim_window"])
        window["path"][1] = "ab" * 32
        row["claim_window"] = orjson.dumps(window, option=orjson.OPT_SORT_KEYS).decode()

    request_id = tamper(windows, 0, 2, edit)
    assert "not in its window" in only_finding(run_verify(windows), 0, 2, request_id)


def test_a_statement_signature_from_another_key_fails(windows: Path) -> None:
    def edit(row: dict[str, Any]) -> None:
        window = orjson.loads(row["claim_window"])
        statement = window_statement(
            row["node_key_id"], window["size"], bytes.fromhex(window["root"])
        )
        row["claim_signature"] = base64.b64encode(ATTACKER.sign(statement)).decode()

    request_id = tamper(windows, 2, 3, edit)
    assert "window signature does not verify" in only_finding(run_verify(windows), 2, 3, request_id)


def test_an_edited_payload_fails(windows: Path) -> None:
    def edit(row: dict[str, Any]) -> None:
        claim = UsageClaim.decode(row["claim_payload"].encode())
        row["claim_payload"] = dataclasses.replace(claim, gpu_seconds=5.0).encode().decode()
        row["gpu_seconds"] = 5.0

    request_id = tamper(windows, 3, 1, edit)
    assert "not in its window" in only_finding(run_verify(windows), 3, 1, request_id)


def test_a_window_claim_relabelled_as_direct_fails(windows: Path) -> None:
    request_id = tamper(windows, 0, 1, lambda row: row.update(claim_window=None))
    assert "claim signature does not verify" in only_finding(run_verify(windows), 0, 1, request_id)


def test_a_direct_claim_relabelled_as_a_window_fails(tmp_path: Path) -> None:
    asyncio.run(build_log_of(tmp_path, (signed_record(i) for i in range(19)), batch_records=5))

    def edit(row: dict[str, Any]) -> None:
        root = leaf_hash(row["claim_payload"].encode()).hex()  # a window of one over it
        window = {"index": 0, "path": [], "root": root, "size": 1}
        row["claim_window"] = orjson.dumps(window, option=orjson.OPT_SORT_KEYS).decode()

    request_id = tamper(tmp_path, 1, 2, edit)
    assert "window signature does not verify" in only_finding(
        run_verify(tmp_path), 1, 2, request_id
    )


def test_a_window_signed_by_an_unknown_node_key_fails_for_each_of_its_claims(
    windows: Path,
) -> None:
    """The insider re-signs a whole window (records 0-3, GPU-seconds × 10) with a node key of
    their own: every claim of it verifies against that key, and each is named as signed by a
    key the log never recorded — and, with pins, by one outside them."""
    leaf, rows = batch_rows(windows, 0)
    attacker_id = key_id(ATTACKER.public_key())
    claims = [
        dataclasses.replace(UsageClaim.decode(row["claim_payload"].encode()), key_id=attacker_id,
                            gpu_seconds=5.0)
        for row in rows[:4]
    ]  # fmt: skip
    public = base64.b64encode(ATTACKER.public_key().public_bytes_raw()).decode()
    for row, signed in zip(rows, sign_window(claims, ATTACKER), strict=False):
        assert signed.window is not None
        row.update(
            claim_payload=signed.payload.decode(), gpu_seconds=5.0, node_key_id=attacker_id,
            claim_signature=base64.b64encode(signed.signature).decode(), node_public_key=public,
            claim_window=signed.window.to_text(),
        )  # fmt: skip
    restore_batch(windows, leaf, rows)
    resign_checkpoints(windows)
    report = run_verify(windows)
    assert [f.where.rsplit(" record ", 1)[1] for f in report.findings] == [
        f"{i} ({rows[i]['request_id']})" for i in range(4)
    ]
    assert all(f"node key {attacker_id}, which is not recorded by the log" in f.what
               for f in report.findings)  # fmt: skip
    pinned = {kid: NODE_PUBLIC_KEY for kid in NODE_KEYS}  # the genuine node key only
    pinned_report = run_verify(windows, pinned)
    assert len(pinned_report.findings) == 4
    assert all("which is not a pinned node key" in f.what for f in pinned_report.findings)

"""`render-gateway audit verify` against what an insider can do and what a careless operator can
pass it: claims re-signed with another node key by someone holding the log key (caught only by
pinned node keys, named per record), an edited row re-stored under its new hash (the changed
leaf and batch named), an empty or missing store (a failure, and nothing written), and a claim
the gateway could not verify when the request settled (counted and listed, never sealed as if
it had verified)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import subprocess
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.audit.keys import load_signer
from render_gateway.audit.node_keys import NodeKey, note_key, sign_node_key_note
from render_gateway.core.usage_records import UsageRecord, build_record
from render_gateway.signing_keys import key_id
from render_gateway.stores.objects import open_object_store
from render_gateway.usage_claim import SignedClaim, UsageClaim, sign_claim

from support.audit_fixtures import NODE_KEY, NODE_KEYS, signed_record
from support.audit_store import (
    ORIGIN,
    batch_rows,
    build_log_of,
    resign_checkpoints,
    restore_batch,
    verify,
)
from support.processes import CLI

ATTACKER = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def resign_with_attacker(data: Path, leaf_index: int, row_index: int) -> str:
    """GPU-seconds × 10 in one row, its claim re-signed with the attacker's node key, the batch
    re-stored and the checkpoints re-signed with the log key; the request id."""
    leaf, rows = batch_rows(data, leaf_index)
    row = rows[row_index]
    original = UsageClaim.decode(row["claim_payload"].encode())
    attacker_id = key_id(ATTACKER.public_key())
    forged = dataclasses.replace(
        original, gpu_seconds=original.gpu_seconds * 10, key_id=attacker_id
    )
    signed: SignedClaim = sign_claim(forged, ATTACKER)
    row.update(
        gpu_seconds=forged.gpu_seconds, claim_payload=signed.payload.decode(),
        claim_signature=base64.b64encode(signed.signature).decode(), node_key_id=attacker_id,
        node_public_key=base64.b64encode(ATTACKER.public_key().public_bytes_raw()).decode(),
    )  # fmt: skip
    restore_batch(data, leaf, rows)
    resign_checkpoints(data)
    return str(row["request_id"])


def note_attacker_key(data: Path) -> None:
    """What an insider also writes: a signed node key note for their own key."""
    objects = open_object_store((data / "cas").as_uri())
    public_key = base64.b64encode(ATTACKER.public_key().public_bytes_raw()).decode()
    note = NodeKey(key_id(ATTACKER.public_key()), public_key, "w1", 1)
    objects.put_new(note_key(1), sign_node_key_note(note, load_signer(data, ORIGIN)))


def genuine_pins(data: Path) -> Path:
    listed = run_cli(
        "audit", "node-keys", "--cas", (data / "cas").as_uri(), "--pubkey",
        str(data / "pubkey.txt"), "--data-dir", str(data),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert key_id(NODE_KEY.public_key()) in listed.stdout  # the log recorded the node's key
    pins = data.parent / "node-keys.txt"
    pins.write_text(listed.stdout)
    return pins


def test_the_log_records_each_node_key_and_verifies_against_pins(data: Path) -> None:
    result = verify(data, "--node-keys", str(genuine_pins(data)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "node keys: pinned (--node-keys)" in result.stdout


def test_a_claim_resigned_with_a_key_the_log_never_recorded(data: Path) -> None:
    request_id = resign_with_attacker(data, 2, 1)
    result = verify(data)
    assert result.returncode == 1, result.stdout
    assert "FAIL leaf 2 (batch" in result.stdout and f"record 1 ({request_id})" in result.stdout
    assert f"node key {key_id(ATTACKER.public_key())}, which is not recorded by the log" in (
        result.stdout
    )


def test_a_claim_resigned_by_an_insider_is_caught_only_by_pinned_node_keys(data: Path) -> None:
    pins = genuine_pins(data)
    request_id = resign_with_attacker(data, 2, 1)
    note_attacker_key(data)
    assert verify(data).returncode == 0  # trust on first use: the insider's note is trusted
    result = verify(data, "--node-keys", str(pins))
    assert result.returncode == 1, result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert lines == [
        f"FAIL leaf 2 (batch {batch_rows(data, 2)[0].batch_blake3[:16]}…) record 1 "
        f"({request_id}): the claim is signed by node key {key_id(ATTACKER.public_key())}, "
        "which is not a pinned node key (--node-keys)"
    ]
    bundle = data / "proof.json"
    proved = run_cli(
        "audit", "prove", request_id, "--out", str(bundle), "--cas", (data / "cas").as_uri(),
        "--origin", ORIGIN, "--data-dir", str(data),
    )  # fmt: skip
    assert proved.returncode == 0, proved.stderr
    pubkey = str(data / "pubkey.txt")
    assert run_cli("audit", "verify-proof", str(bundle), "--pubkey", pubkey).returncode == 0
    refused = run_cli(
        "audit", "verify-proof", str(bundle), "--pubkey", pubkey, "--node-keys", str(pins)
    )
    assert refused.returncode == 1 and "not a pinned node key" in refused.stderr


def test_an_edited_row_restored_under_its_new_hash_names_the_leaf(data: Path) -> None:
    leaf, rows = batch_rows(data, 2)
    rows[3]["customer_id"] = "someone-else"  # a field the backend's claim does not cover
    edited = restore_batch(data, leaf, rows)
    result = verify(data)
    assert result.returncode == 1, result.stdout
    assert (
        f"FAIL leaf 2 (batch {edited.batch_blake3[:16]}…): changed after checkpoint 3 signed it"
        in result.stdout
    )
    assert "FAIL checkpoints 3…4: their roots do not match" in result.stdout


def test_nothing_to_verify_is_a_failure(tmp_path: Path) -> None:
    empty = tmp_path / "cas"
    empty.mkdir()
    pubkey = tmp_path / "pubkey.txt"
    pubkey.write_text(run_cli("audit", "pubkey", "--data-dir", str(tmp_path / "gateway")).stdout)
    args = ["audit", "verify", "--cas", empty.as_uri(), "--pubkey", str(pubkey)]
    result = run_cli(*args, "--data-dir", str(tmp_path / "verifier"))
    assert result.returncode == 1 and "FAIL log: nothing to verify" in result.stdout
    assert run_cli(*args, "--allow-empty", "--data-dir", str(tmp_path / "v")).returncode == 0
    assert list(empty.iterdir()) == []


def test_verify_writes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    result = run_cli(
        "audit", "verify", "--cas", missing.as_uri(), "--data-dir", str(tmp_path / "d")
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no such directory" in result.stderr
    # No store made, and no log key made for a verifier that has none.
    assert not (tmp_path / "no").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize("problem", ["unknown key", "wrong GPU-seconds"])
def test_a_claim_that_did_not_verify_at_settle_is_sealed_unverified(
    tmp_path: Path, problem: str
) -> None:
    asyncio.run(build_unverified_log(tmp_path, problem))
    result = verify(tmp_path, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = orjson.loads(result.stdout)
    assert report["records_with_unverified_claim"] == 1 and report["records"] == 3
    [unverified] = report["unverified_claims"]
    assert "req_test00000001" in unverified["where"]
    expected = "is not one the gateway knows" if problem == "unknown key" else "GPU-seconds"
    assert expected in unverified["what"]


async def build_unverified_log(data: Path, problem: str) -> None:
    """Three records through the real record builder; the middle one's claim fails at settle."""
    records = [signed_record(0), unverified_record(1, problem), signed_record(2)]
    await build_log_of(data, records, batch_records=10)


def unverified_record(index: int, problem: str) -> UsageRecord:
    record = signed_record(index)
    parameters = {
        "gpu_seconds": record.gpu_seconds * (3 if problem == "wrong GPU-seconds" else 1),
        "usage_claim": record.usage_claim,
    }
    keys = {} if problem == "unknown key" else NODE_KEYS
    built = build_record(
        request_id=record.request_id, customer_id="acme", plan="default", tier="async",
        modality="image", family="sd", model="tiny", created_at=record.timestamp - 1,
        started_at=record.timestamp - 0.5, ended_at=record.timestamp, outcome="success",
        unit_price=0.001, currency="USD", backend="w1", parameters=parameters, node_keys=keys,
    )  # fmt: skip
    assert built.claim_error is not None and built.node_public_key is None
    return built

"""`render-gateway audit verify` on a real store, against each attack the audit log must
catch: every case tampers with the stored objects the way an attacker with write access to the
bucket could, then runs the real CLI and checks that it fails and names the place."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.audit.cas import ContentStore
from render_gateway.audit.keys import public_key_line
from render_gateway.audit.leaves import BatchLeaf, checkpoint_key, leaf_key
from render_gateway.audit.signed_note import NoteSigner, sign_note
from render_gateway.stores.objects import open_object_store

from support.audit_store import ORIGIN, build_log, verify
from support.processes import CLI


def expect_failure(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    for needle in needles:
        assert needle in result.stdout, f"{needle!r} not in:\n{result.stdout}"


def blob_path(data: Path, leaf_index: int) -> Path:
    objects = open_object_store((data / "cas").as_uri())
    leaf = BatchLeaf.decode(objects.get(leaf_key(leaf_index)))
    return data / "cas" / ContentStore(objects).key_of(leaf.batch_blake3)


def test_an_untouched_log_verifies(data: Path) -> None:
    result = verify(data)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified: 4 batches, 19 records" in result.stdout


def test_a_flipped_byte_in_a_batch(data: Path) -> None:
    path = blob_path(data, 1)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    expect_failure(verify(data), "FAIL leaf 1", "do not match its hash")


def test_worker_processes_verify_the_same_and_the_cli_exits_cleanly(data: Path) -> None:
    """--workers 2: batches checked in spawned processes; the CLI exits 0, with nothing on
    stderr (Arrow's pool threads once aborted a CLI at exit: apache/arrow#34314), every time."""
    for _ in range(5):
        result = verify(data, "--workers", "2")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "verified: 4 batches, 19 records" in result.stdout
        assert "terminate called" not in result.stderr and "Traceback" not in result.stderr
    path = blob_path(data, 2)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    expect_failure(verify(data, "--workers", "2"), "FAIL leaf 2 (batch", "do not match its hash")


def test_a_deleted_batch(data: Path) -> None:
    blob_path(data, 2).unlink()
    expect_failure(verify(data), "FAIL leaf 2", "missing")


def test_reordered_batches(data: Path) -> None:
    first, second = data / "cas" / leaf_key(1), data / "cas" / leaf_key(2)
    one, two = first.read_bytes(), second.read_bytes()
    first.write_bytes(two)
    second.write_bytes(one)
    expect_failure(verify(data), "reordered", "log rewritten")


def test_a_replayed_batch(data: Path) -> None:
    (data / "cas" / leaf_key(4)).write_bytes((data / "cas" / leaf_key(1)).read_bytes())
    expect_failure(verify(data), "FAIL leaf 00000000000000000004", "replays batch", "not covered")


def test_a_truncated_log(data: Path) -> None:
    (data / "cas" / leaf_key(3)).unlink()
    expect_failure(verify(data), "signs 4 leaves but the log has 3: truncated")


def test_a_rolled_back_log_is_caught_against_a_trusted_checkpoint(data: Path) -> None:
    trusted = data / "trusted-checkpoint"
    trusted.write_bytes((data / "cas" / checkpoint_key(4)).read_bytes())
    (data / "cas" / leaf_key(3)).unlink()
    (data / "cas" / checkpoint_key(4)).unlink()
    assert verify(data).returncode == 0  # consistent on its own: only an outside copy tells
    expect_failure(verify(data, "--trusted-checkpoint", str(trusted)), "rolled back")


def test_a_forged_checkpoint_signature(data: Path) -> None:
    forger = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())  # same name, another key
    path = data / "cas" / checkpoint_key(4)
    text = path.read_bytes().decode().split("\n\n")[0] + "\n"
    path.write_bytes(sign_note(text, [forger]))
    expect_failure(verify(data), "FAIL checkpoint 4: does not verify")


def test_a_signature_swapped_in_from_another_checkpoint(data: Path) -> None:
    mine = (data / "cas" / checkpoint_key(4)).read_bytes().decode()
    theirs = (data / "cas" / checkpoint_key(3)).read_bytes().decode()
    swapped = mine.split("\n\n")[0] + "\n\n" + theirs.split("\n\n")[1]
    (data / "cas" / checkpoint_key(4)).write_bytes(swapped.encode())
    expect_failure(verify(data), "FAIL checkpoint 4: does not verify")


def test_an_attestation_whose_backend_claim_does_not_hold(tmp_path: Path) -> None:
    asyncio.run(build_log(tmp_path, bad_claim_at=7))
    expect_failure(
        verify(tmp_path), "FAIL leaf 1", "record 2 (req_test00000007)", "the backend claimed 0.25"
    )


def test_a_key_that_is_not_the_logs(data: Path, tmp_path: Path) -> None:
    stranger = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    (data / "pubkey.txt").write_text(public_key_line(stranger) + "\n")
    expect_failure(verify(data), "FAIL checkpoint 1: does not verify")


def test_prove_and_verify_proof_through_the_cli(data: Path) -> None:
    bundle = data / "proof.json"
    subprocess.run(
        [*CLI, "audit", "prove", "req_test00000012", "--out", str(bundle), "--cas",
         (data / "cas").as_uri(), "--origin", ORIGIN, "--data-dir", str(data)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    checked = subprocess.run(
        [*CLI, "audit", "verify-proof", str(bundle), "--pubkey", str(data / "pubkey.txt")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "verified: request req_test00000012" in checked.stdout
    bundle.write_text(bundle.read_text().replace('"leaf_index": 2', '"leaf_index": 1'))
    refused = subprocess.run(
        [*CLI, "audit", "verify-proof", str(bundle), "--pubkey", str(data / "pubkey.txt")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1 and "FAIL" in refused.stderr

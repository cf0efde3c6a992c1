"""Signed usage claims (Ed25519 over canonical bytes) and the key files that sign them."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import stat
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.signing_keys import (
    KeyFileError,
    key_id,
    load_key,
    load_or_create_key,
    public_key_bytes,
)
from render_gateway.usage_claim import (
    InvalidClaim,
    SignedClaim,
    UsageClaim,
    sign_claim,
    verify_claim,
)


@pytest.fixture(scope="module")
def private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def claim(private_key: Ed25519PrivateKey) -> UsageClaim:
    return UsageClaim(
        request_id="req_abc123",
        model="demo",
        device_uuid="GPU-00000000-1111-2222-3333-444444444444",
        device_kind="NVIDIA H100",
        gpu_seconds=1.234567,
        started_at="2025-01-01T00:00:00.000000Z",
        ended_at="2025-01-01T00:00:01.234567Z",
        seed=42,
        output_blake3=("a" * 64, "b" * 64),
        status="complete",
        steps_completed=20,
        key_id=key_id(private_key.public_key()),
    )


@pytest.fixture(scope="module")
def signed(claim: UsageClaim, private_key: Ed25519PrivateKey) -> SignedClaim:
    return sign_claim(claim, private_key)


def _flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


# ------------------------------------------------------------------------------ sign / verify


def test_sign_then_verify(
    claim: UsageClaim, signed: SignedClaim, private_key: Ed25519PrivateKey
) -> None:
    assert signed.payload == claim.encode()
    assert signed.key_id == claim.key_id
    assert signed.algorithm == "Ed25519"
    assert len(signed.signature) == 64
    assert verify_claim(signed, private_key.public_key()) == claim


def test_payload_is_canonical(claim: UsageClaim) -> None:
    payload = claim.encode()
    assert b" " not in payload.replace(b"NVIDIA H100", b"")
    keys = list(orjson.loads(payload))
    assert keys == sorted(keys)
    assert UsageClaim.decode(payload) == claim


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_payload_byte_change_fails(
    signed: SignedClaim, private_key: Ed25519PrivateKey, fraction: float
) -> None:
    position = min(int(len(signed.payload) * fraction), len(signed.payload) - 1)
    tampered = dataclasses.replace(signed, payload=_flip(signed.payload, position))
    with pytest.raises(InvalidClaim, match="does not verify"):
        verify_claim(tampered, private_key.public_key())


def test_payload_semantic_change_fails(signed: SignedClaim, private_key: Ed25519PrivateKey) -> None:
    forged = signed.payload.replace(b'"gpu_seconds":1.234567', b'"gpu_seconds":0.234567')
    assert forged != signed.payload
    with pytest.raises(InvalidClaim, match="does not verify"):
        verify_claim(dataclasses.replace(signed, payload=forged), private_key.public_key())


@pytest.mark.parametrize("position", [0, 1, 31, 32, 63])
def test_signature_byte_change_fails(
    signed: SignedClaim, private_key: Ed25519PrivateKey, position: int
) -> None:
    tampered = dataclasses.replace(signed, signature=_flip(signed.signature, position))
    with pytest.raises(InvalidClaim, match="does not verify"):
        verify_claim(tampered, private_key.public_key())


def test_truncated_signature_fails(signed: SignedClaim, private_key: Ed25519PrivateKey) -> None:
    tampered = dataclasses.replace(signed, signature=signed.signature[:-1])
    with pytest.raises(InvalidClaim):
        verify_claim(tampered, private_key.public_key())


def test_wrong_public_key_fails(signed: SignedClaim) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(InvalidClaim, match="signed by key"):
        verify_claim(signed, other)


def test_wrong_public_key_with_forged_envelope_id_fails(signed: SignedClaim) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    forged = dataclasses.replace(signed, key_id=key_id(other))
    with pytest.raises(InvalidClaim, match="does not verify"):
        verify_claim(forged, other)


def test_envelope_key_id_mismatch_fails(
    signed: SignedClaim, private_key: Ed25519PrivateKey
) -> None:
    with pytest.raises(InvalidClaim, match="signed by key 0000000000000000"):
        verify_claim(dataclasses.replace(signed, key_id="0" * 16), private_key.public_key())


def test_payload_key_id_differs_from_envelope(
    claim: UsageClaim, private_key: Ed25519PrivateKey
) -> None:
    # Signed with the right key but the payload names another key: sign by hand.
    inner = dataclasses.replace(claim, key_id="f" * 16)
    payload = inner.encode()
    envelope = SignedClaim(payload, private_key.sign(payload), key_id(private_key.public_key()))
    with pytest.raises(InvalidClaim, match="different key"):
        verify_claim(envelope, private_key.public_key())


def test_unsupported_algorithm_fails(signed: SignedClaim, private_key: Ed25519PrivateKey) -> None:
    with pytest.raises(InvalidClaim, match="unsupported claim algorithm 'RS256'"):
        verify_claim(dataclasses.replace(signed, algorithm="RS256"), private_key.public_key())


@pytest.mark.parametrize("style", ["spaces", "key_order"])
def test_non_canonical_payload_is_rejected(
    claim: UsageClaim, private_key: Ed25519PrivateKey, style: str
) -> None:
    fields = orjson.loads(claim.encode())
    if style == "spaces":
        import json

        payload = json.dumps(fields, sort_keys=True).encode()
    else:
        payload = orjson.dumps(dict(reversed(list(fields.items()))))
    assert payload != claim.encode()
    assert orjson.loads(payload) == fields
    envelope = SignedClaim(payload, private_key.sign(payload), claim.key_id)
    with pytest.raises(InvalidClaim, match="canonical"):
        verify_claim(envelope, private_key.public_key())
    with pytest.raises(InvalidClaim, match="canonical"):
        UsageClaim.decode(payload)


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[]", b'"text"', b"{}", b'{"output_blake3": 5}', b'{"output_blake3": []}'],
)
def test_decode_malformed_payload(payload: bytes) -> None:
    with pytest.raises(InvalidClaim, match="not a valid claim"):
        UsageClaim.decode(payload)


def test_decode_unknown_field(claim: UsageClaim) -> None:
    fields = orjson.loads(claim.encode())
    fields["bonus"] = 1
    with pytest.raises(InvalidClaim, match="not a valid claim"):
        UsageClaim.decode(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS))


def test_sign_claim_refuses_other_key_id(claim: UsageClaim) -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ValueError, match="claim names key"):
        sign_claim(claim, other)


# ------------------------------------------------------------------------- text / JSON forms


def test_to_text_from_text_round_trip(
    signed: SignedClaim, claim: UsageClaim, private_key: Ed25519PrivateKey
) -> None:
    text = signed.to_text()
    assert isinstance(text, str)
    data = orjson.loads(text)
    assert set(data) == {"payload", "signature", "key_id", "alg"}
    assert base64.b64decode(data["signature"]) == signed.signature
    restored = SignedClaim.from_text(text)
    assert restored == signed
    assert verify_claim(restored, private_key.public_key()) == claim


def test_from_text_not_json() -> None:
    with pytest.raises(InvalidClaim, match="not JSON"):
        SignedClaim.from_text("{oops")


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "text",
        {},
        {"payload": "{}", "signature": "AAAA", "key_id": "k"},  # no alg
        {"payload": "{}", "key_id": "k", "alg": "Ed25519"},  # no signature
        {"payload": "{}", "signature": "not base64!", "key_id": "k", "alg": "Ed25519"},
        {"payload": "{}", "signature": "AAA", "key_id": "k", "alg": "Ed25519"},  # bad padding
    ],
)
def test_from_json_malformed(data: object) -> None:
    with pytest.raises(InvalidClaim, match="malformed"):
        SignedClaim.from_json(data)


def test_from_text_malformed_structure() -> None:
    with pytest.raises(InvalidClaim, match="malformed"):
        SignedClaim.from_text("[1, 2]")


def test_from_json_non_ascii_signature_is_invalid_claim() -> None:
    data = {"payload": "{}", "signature": "é", "key_id": "k", "alg": "Ed25519"}
    with pytest.raises(InvalidClaim):
        SignedClaim.from_json(data)


# ---------------------------------------------------------------------------------- key files


def test_key_id_is_sha256_prefix_of_raw_public_key(private_key: Ed25519PrivateKey) -> None:
    public = private_key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert public_key_bytes(public) == raw
    assert len(raw) == 32
    ident = key_id(public)
    assert len(ident) == 16
    assert all(c in "0123456789abcdef" for c in ident)
    assert ident == hashlib.sha256(raw).hexdigest()[:16]
    assert key_id(Ed25519PrivateKey.generate().public_key()) != ident


def test_load_or_create_key_creates_private_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "node.key"
    key = load_or_create_key(path)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_or_create_key(path)
    assert public_key_bytes(again.public_key()) == public_key_bytes(key.public_key())
    assert public_key_bytes(load_key(path).public_key()) == public_key_bytes(key.public_key())


def test_created_key_signs_verifiable_claims(tmp_path: Path, claim: UsageClaim) -> None:
    key = load_or_create_key(tmp_path / "node.key")
    mine = dataclasses.replace(claim, key_id=key_id(key.public_key()))
    reloaded = load_or_create_key(tmp_path / "node.key")
    assert verify_claim(sign_claim(mine, key), reloaded.public_key()) == mine


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_readable_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    load_or_create_key(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match=f"mode {mode:04o}"):
        load_or_create_key(path)


def _write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def test_non_pem_file_is_refused(tmp_path: Path) -> None:
    path = _write_private(tmp_path / "node.key", b"this is not a key\n")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        load_or_create_key(path)


def test_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = _write_private(tmp_path / "node.key", pem)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_or_create_key(path)


def test_encrypted_key_is_refused_with_key_file_error(tmp_path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = _write_private(tmp_path / "node.key", pem)
    with pytest.raises(KeyFileError):
        load_or_create_key(path)

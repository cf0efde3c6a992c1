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

from render_gateway.audit.merkle import inclusion_proof, leaf_hash
from render_gateway.audit.merkle import root as merkle_root
from render_gateway.signing_keys import (
    KeyFileError,
    key_id,
    load_key,
    load_or_create_key,
    public_key_bytes,
)
from render_gateway.usage_claim import (
    ClaimCheck,
    ClaimWindow,
    InvalidClaim,
    SignedClaim,
    UsageClaim,
    WindowStatements,
    check_claim_text,
    claim_fields,
    sign_claim,
    sign_window,
    verify_claim,
    window_statement,
    window_tree,
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


# ---------------------------------------------------------------- windows (Ed25519-window)


def _claims(private_key: Ed25519PrivateKey, count: int, first: int = 0) -> list[UsageClaim]:
    kid = key_id(private_key.public_key())
    return [
        UsageClaim(
            request_id=f"req_w{first + i}",
            model="demo",
            device_uuid="GPU-0",
            device_kind="cuda",
            gpu_seconds=0.25 * (i + 1),
            started_at="2025-01-01T00:00:00.000000Z",
            ended_at="2025-01-01T00:00:01.000000Z",
            seed=i,
            output_blake3=("c" * 64,),
            status="complete",
            steps_completed=4,
            key_id=kid,
        )
        for i in range(count)
    ]


def _settle(
    text: str, key: Ed25519PrivateKey, request: str, seconds: float, cache: WindowStatements
) -> ClaimCheck:
    keys = {key_id(key.public_key()): public_key_bytes(key.public_key())}
    return check_claim_text(text, keys, request, seconds, cache)


def test_window_statement_is_exactly_the_documented_bytes() -> None:
    root = bytes(range(32))
    assert window_statement("0123456789abcdef", 17, root) == (
        b"render usage-claim window v1\n0123456789abcdef\n17\n" + root.hex().encode() + b"\n"
    )


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 9, 33])
def test_window_claims_verify_each_with_its_own_payload(
    private_key: Ed25519PrivateKey, size: int
) -> None:
    claims = _claims(private_key, size)
    signed = sign_window(claims, private_key)
    assert len({s.signature for s in signed}) == 1  # one signature for the window
    for index, (claim, envelope) in enumerate(zip(claims, signed, strict=True)):
        assert envelope.algorithm == "Ed25519-window" and envelope.payload == claim.encode()
        assert envelope.window is not None and envelope.window.index == index
        assert envelope.window.size == size
        restored = SignedClaim.from_text(envelope.to_text())
        assert restored == envelope
        assert verify_claim(restored, private_key.public_key()) == claim
        data = orjson.loads(envelope.to_text())
        assert set(data) == {"alg", "key_id", "payload", "signature", "window"}
        assert list(data["window"]) == ["index", "path", "root", "size"]  # canonical, sorted


def test_settle_verifies_one_statement_per_window(private_key: Ed25519PrivateKey) -> None:
    claims = _claims(private_key, 5)
    cache = WindowStatements(capacity=8)
    for claim, envelope in zip(claims, sign_window(claims, private_key), strict=True):
        checked = _settle(envelope.to_text(), private_key, claim.request_id, claim.gpu_seconds,
                          cache)  # fmt: skip
        assert checked == ClaimCheck(public_key=public_key_bytes(private_key.public_key()))
    assert len(cache) == 1
    for claim, envelope in zip(claims, sign_window(_claims(private_key, 2, 9), private_key),
                               strict=False):  # fmt: skip
        _settle(envelope.to_text(), private_key, f"req_w{9 + claims.index(claim)}", 0.0, cache)
    assert len(cache) == 2


def test_the_settle_cache_is_bounded(private_key: Ed25519PrivateKey) -> None:
    cache = WindowStatements(capacity=3)
    for window in range(5):
        [claim] = _claims(private_key, 1, first=window)
        [envelope] = sign_window([claim], private_key)
        check = _settle(envelope.to_text(), private_key, claim.request_id, claim.gpu_seconds,
                        cache)  # fmt: skip
        assert check.error is None
    assert len(cache) == 3


def _window_envelope(private_key: Ed25519PrivateKey) -> tuple[list[UsageClaim], list[SignedClaim]]:
    claims = _claims(private_key, 6)
    return claims, sign_window(claims, private_key)


def _tampered_window(envelope: SignedClaim, **changes: object) -> SignedClaim:
    assert envelope.window is not None
    return dataclasses.replace(envelope, window=dataclasses.replace(envelope.window, **changes))


def test_settle_refuses_forged_window_claims(private_key: Ed25519PrivateKey) -> None:
    claims, signed = _window_envelope(private_key)
    other_claims = _claims(private_key, 6, first=100)
    other = sign_window(other_claims, private_key)
    attacker = Ed25519PrivateKey.generate()
    assert signed[2].window is not None and other[2].window is not None
    statement = window_statement(signed[2].key_id, 6, signed[2].window.root)
    forged = {
        # claim 2 given the place of claim 2 in another window (its root, path and signature)
        "moved": dataclasses.replace(other[2], payload=signed[2].payload),
        "wrong path": _tampered_window(signed[2], path=(b"\x00" * 32, *signed[2].window.path[1:])),
        "wrong index": _tampered_window(signed[2], index=3),
        "other key's statement signature": dataclasses.replace(
            signed[2], signature=attacker.sign(statement)
        ),
        "edited payload": dataclasses.replace(
            signed[2], payload=dataclasses.replace(claims[2], seed=99).encode()
        ),
    }
    for name, envelope in forged.items():
        check = _settle(envelope.to_text(), private_key, claims[2].request_id,
                        claims[2].gpu_seconds, WindowStatements())  # fmt: skip
        assert check.public_key is None and check.error is not None, name
        assert "does not verify" in check.error, (name, check.error)
    genuine = _settle(signed[2].to_text(), private_key, claims[2].request_id,
                      claims[2].gpu_seconds, WindowStatements())  # fmt: skip
    assert genuine.error is None


def test_settle_refuses_a_window_signed_by_an_unknown_node_key(
    private_key: Ed25519PrivateKey,
) -> None:
    stranger = Ed25519PrivateKey.generate()
    [claim] = _claims(stranger, 1)
    [envelope] = sign_window([claim], stranger)
    check = _settle(envelope.to_text(), private_key, claim.request_id, claim.gpu_seconds,
                    WindowStatements())  # fmt: skip
    assert check.error == f"node key {key_id(stranger.public_key())} is not one the gateway knows"


def test_settle_still_checks_request_id_and_gpu_seconds_of_window_claims(
    private_key: Ed25519PrivateKey,
) -> None:
    claims, signed = _window_envelope(private_key)
    cache = WindowStatements()
    text = signed[1].to_text()
    assert _settle(text, private_key, "req_other", claims[1].gpu_seconds, cache).error == (
        f"the claim is for request {claims[1].request_id}"
    )
    wrong = _settle(text, private_key, claims[1].request_id, 9.0, cache).error
    assert wrong is not None and "GPU-seconds, not 9.0" in wrong


def test_a_direct_claim_relabelled_as_a_window_fails(
    signed: SignedClaim, private_key: Ed25519PrivateKey
) -> None:
    # A window of one over the payload has the payload's leaf hash as root; the direct
    # signature is over the payload itself, never over the domain-separated statement.
    window = ClaimWindow(0, 1, leaf_hash(signed.payload), ())
    relabelled = dataclasses.replace(signed, algorithm="Ed25519-window", window=window)
    with pytest.raises(InvalidClaim, match="window signature does not verify"):
        verify_claim(SignedClaim.from_text(relabelled.to_text()), private_key.public_key())


def test_a_window_claim_relabelled_as_direct_fails(private_key: Ed25519PrivateKey) -> None:
    _, signed = _window_envelope(private_key)
    direct = dataclasses.replace(signed[0], algorithm="Ed25519", window=None)
    with pytest.raises(InvalidClaim, match="claim signature does not verify"):
        verify_claim(direct, private_key.public_key())
    # And the envelope must say what it is: an algorithm without its window, or the reverse.
    data = orjson.loads(signed[0].to_text())
    for alg, window in (("Ed25519", data["window"]), ("Ed25519-window", None)):
        text = orjson.dumps({**data, "alg": alg, "window": window}).decode()
        if window is None:
            text = orjson.dumps({k: v for k, v in data.items() if k != "window"} | {"alg": alg})
            text = text.decode()
        with pytest.raises(InvalidClaim, match="malformed"):
            SignedClaim.from_text(text)
    with pytest.raises(InvalidClaim, match="carries a window"):
        verify_claim(dataclasses.replace(direct, window=signed[0].window), private_key.public_key())


@pytest.mark.parametrize(
    "window",
    [
        {"index": 0, "path": [], "root": "00" * 32},  # no size
        {"index": 0, "path": [], "root": "00" * 32, "size": 1, "extra": 1},
        {"index": -1, "path": [], "root": "00" * 32, "size": 1},
        {"index": 0, "path": [], "root": "00" * 32, "size": 0},
        {"index": True, "path": [], "root": "00" * 32, "size": 1},
        {"index": 0, "path": [], "root": "AB" * 32, "size": 1},  # one spelling: lower case
        {"index": 0, "path": [], "root": "0" * 63, "size": 1},
        {"index": 0, "path": ["zz" * 32], "root": "00" * 32, "size": 2},
        {"index": 0, "path": "00", "root": "00" * 32, "size": 2},
    ],
)
def test_malformed_windows_are_refused(window: dict[str, object]) -> None:
    with pytest.raises(InvalidClaim):
        ClaimWindow.from_json(window)


def test_window_tree_matches_the_merkle_module() -> None:
    for size in range(1, 40):
        leaves = [leaf_hash(bytes([size, i])) for i in range(size)]
        root, paths = window_tree(leaves)
        assert root == merkle_root(leaves)
        assert [list(p) for p in paths] == [inclusion_proof(leaves, i) for i in range(size)]


def test_sign_window_refuses_claims_of_another_key(private_key: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="claim names key"):
        sign_window(_claims(Ed25519PrivateKey.generate(), 2), private_key)
    with pytest.raises(ValueError, match="a window holds"):
        sign_window([], private_key)


def test_claim_fields_is_decode_without_the_object(claim: UsageClaim) -> None:
    fields = claim_fields(claim.encode())
    assert fields == {**dataclasses.asdict(claim), "output_blake3": list(claim.output_blake3)}
    missing_version = {k: v for k, v in orjson.loads(claim.encode()).items() if k != "version"}
    with pytest.raises(InvalidClaim, match="missing \\['version'\\]"):
        UsageClaim.decode(orjson.dumps(missing_version, option=orjson.OPT_SORT_KEYS))
    wrong: list[tuple[str, object]] = [
        ("seed", True), ("gpu_seconds", -1), ("gpu_seconds", "1"), ("request_id", 5),
        ("output_blake3", ["a", 1]), ("status", "done"),
    ]  # fmt: skip
    for field, value in wrong:
        bad = orjson.dumps({**fields, field: value}, option=orjson.OPT_SORT_KEYS)
        with pytest.raises(InvalidClaim):
            claim_fields(bad)


def test_encode_is_the_asdict_encoding(claim: UsageClaim) -> None:
    fields = dataclasses.asdict(claim)
    fields["output_blake3"] = list(claim.output_blake3)
    assert claim.encode() == orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)

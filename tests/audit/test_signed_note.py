"""Signed notes (c2sp.org/signed-note) and checkpoints (c2sp.org/tlog-checkpoint)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from render_gateway.audit.merkle import MerkleLog, leaf_hash
from render_gateway.audit.signed_note import (
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    key_id,
    open_note,
    parse_signer_key,
    parse_verifier_key,
    sign_note,
    signer_key,
    verifier_key,
)

TEXT = "example.com/render-gateway/usage\n42\n" + "A" * 43 + "=\n"


def _signer(seed: int, name: str = "example.com/log") -> NoteSigner:
    return NoteSigner(name, Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


ALICE = _signer(1, "alice.example/log")
BOB = _signer(2, "bob.example/witness")
CAROL = _signer(3, "carol.example/witness")


def _signature_lines(note: bytes) -> list[str]:
    return note.decode().split("\n\n")[-1].splitlines()


def _replace_signature(line: str, mutate: bytes) -> str:
    """XOR ``mutate`` into the start of the signature (after the 4-byte key ID)."""
    prefix, encoded = line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(encoded))
    for offset, value in enumerate(mutate):
        raw[4 + offset] ^= value
    return f"{prefix} {base64.b64encode(bytes(raw)).decode()}"


# --- The Go documentation's example key and note (golang.org/x/mod/sumdb/note) ----------------

GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgK"
    "vqfqdngotpRZb6KE6RyyBwJnAM=\n"
).encode()


def test_go_example_verifier_key() -> None:
    verifier = parse_verifier_key(GO_VERIFIER_KEY)
    assert verifier.name == "PeterNeumann"
    assert verifier.key_id == 0xC74F20A3
    assert key_id("PeterNeumann", verifier.public_key) == 0xC74F20A3
    assert verifier_key("PeterNeumann", verifier.public_key) == GO_VERIFIER_KEY


def test_go_example_signer_key_and_note_are_reproduced_exactly() -> None:
    signer = parse_signer_key(GO_SIGNER_KEY)
    assert signer.key_id == 0xC74F20A3
    assert signer.verifier() == parse_verifier_key(GO_VERIFIER_KEY)
    assert signer_key("PeterNeumann", signer.private_key) == GO_SIGNER_KEY
    assert sign_note(GO_TEXT, [signer]) == GO_NOTE  # Ed25519 is deterministic
    text, signed_by = open_note(GO_NOTE, [parse_verifier_key(GO_VERIFIER_KEY)])
    assert text == GO_TEXT
    assert [v.name for v in signed_by] == ["PeterNeumann"]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 hexadecimal"),
        ("PeterNeumann+-74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 hexadecimal"),
        ("PeterNeumann+c74f20a3+AhpC2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "Ed25519 key"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T", "base64"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW==", "base64"),
        ("PeterNeumann+c74f20a3", "form"),
        ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "empty"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "spaces"),
    ],
)
def test_bad_verifier_keys_are_rejected(key: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        parse_verifier_key(key)


def test_bad_signer_keys_are_rejected() -> None:
    with pytest.raises(NoteError, match="PRIVATE"):
        parse_signer_key(GO_VERIFIER_KEY)
    with pytest.raises(NoteError, match="does not match"):
        parse_signer_key(GO_SIGNER_KEY.replace("c74f20a3", "00000000"))


def test_verifier_key_round_trip_and_uppercase_id() -> None:
    key = verifier_key(ALICE.name, ALICE.private_key.public_key())
    assert parse_verifier_key(key) == ALICE.verifier()
    name, hex_id, encoded = key.split("+", 2)
    assert parse_verifier_key(f"{name}+{hex_id.upper()}+{encoded}") == ALICE.verifier()


@pytest.mark.parametrize("name", ["", "a b", "a+b", "tab\tname", "nbsp\u00a0name", "line\u2028"])
def test_key_names_are_checked(name: str) -> None:
    with pytest.raises(NoteError):
        _signer(9, name)
    with pytest.raises(NoteError):
        NoteVerifier(name, bytes(32))


# --- Signing and opening ---------------------------------------------------------------------


def test_round_trip_and_exact_format() -> None:
    note = sign_note(TEXT, [ALICE])
    [line] = _signature_lines(note)
    raw = base64.b64decode(line.split(" ")[-1])
    assert note == f"{TEXT}\n— {ALICE.name} {base64.b64encode(raw).decode()}\n".encode()
    assert raw[:4] == ALICE.key_id.to_bytes(4, "big")
    assert ALICE.verifier().verify(TEXT.encode(), raw[4:])
    assert open_note(note, [ALICE.verifier()]) == (TEXT, [ALICE.verifier()])


def test_two_signers() -> None:
    note = sign_note(TEXT, [ALICE, BOB])
    assert len(_signature_lines(note)) == 2
    assert open_note(note, [ALICE.verifier()])[1] == [ALICE.verifier()]
    assert open_note(note, [BOB.verifier()])[1] == [BOB.verifier()]
    both = open_note(note, [BOB.verifier(), ALICE.verifier(), CAROL.verifier()])[1]
    assert both == [ALICE.verifier(), BOB.verifier()]  # in signature order, known keys only


def test_unknown_signatures_are_ignored_but_one_known_is_required() -> None:
    note = sign_note(TEXT, [CAROL, ALICE])
    assert open_note(note, [ALICE.verifier()])[1] == [ALICE.verifier()]
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(sign_note(TEXT, [CAROL]), [ALICE.verifier(), BOB.verifier()])
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(note, [])


def test_tampered_text_is_rejected() -> None:
    note = sign_note(TEXT, [ALICE])
    tampered = note.replace(b"\n42\n", b"\n43\n", 1)
    with pytest.raises(NoteError, match="does not verify"):
        open_note(tampered, [ALICE.verifier()])


def test_tampered_signature_is_rejected() -> None:
    note = sign_note(TEXT, [ALICE])
    [line] = _signature_lines(note)
    tampered = f"{TEXT}\n{_replace_signature(line, bytes([1]))}\n".encode()
    with pytest.raises(NoteError, match="does not verify"):
        open_note(tampered, [ALICE.verifier()])


def test_a_bad_signature_from_a_known_key_is_never_skipped() -> None:
    alice, bob = _signature_lines(sign_note(TEXT, [ALICE, BOB]))
    bad_bob = _replace_signature(bob, b"\x80")
    for lines in ([alice, bad_bob], [bad_bob, alice], [alice, alice, bad_bob]):
        note = (TEXT + "\n" + "".join(line + "\n" for line in lines)).encode()
        with pytest.raises(NoteError, match=r"bob\.example/witness"):
            open_note(note, [ALICE.verifier(), BOB.verifier()])
    bad_alice_twice = (TEXT + f"\n{alice}\n{_replace_signature(alice, bytes([2]))}\n").encode()
    with pytest.raises(NoteError, match="does not verify"):
        open_note(bad_alice_twice, [ALICE.verifier()])


def test_swapped_keys() -> None:
    # Alice's name with Bob's public key: a different key ID, so Alice's signature is unknown.
    impostor = NoteVerifier(ALICE.name, BOB.verifier().public_key)
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(sign_note(TEXT, [ALICE]), [impostor])
    # Bob's name and key ID on a signature that Alice's key made: a known key that fails.
    forged_line = (
        f"— {BOB.name} "
        + base64.b64encode(BOB.key_id.to_bytes(4, "big") + ALICE.sign(TEXT.encode())).decode()
    )
    with pytest.raises(NoteError, match="does not verify"):
        open_note(f"{TEXT}\n{forged_line}\n".encode(), [BOB.verifier()])


def test_text_may_contain_blank_lines() -> None:
    text = "first\n\nsecond\n\n"
    note = sign_note(text, [ALICE])
    assert open_note(note, [ALICE.verifier()])[0] == text


def _note_with(signature_block: str) -> bytes:
    return (TEXT + "\n" + signature_block).encode()


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (TEXT.encode(), "no blank line"),
        (TEXT.encode() + b"\n", "no signature lines"),
        (sign_note(TEXT, [ALICE])[:-1], "newline"),
        (_note_with("garbage\n" + _signature_lines(sign_note(TEXT, [ALICE]))[0] + "\n"), "em dash"),
        (_note_with("-- alice.example/log AAAAAAAA\n"), "em dash"),
        (_note_with("— alice.example/log\n"), "no space"),
        (_note_with("— alice.example/log not*base64\n"), "base64"),
        (_note_with("— alice.example/log AAAAAAB=\n"), "canonical"),  # non-zero padding bits
        (_note_with("— alice.example/log AAAAAA==\n"), "too short"),
        (_note_with("— alice.example/log \n"), "base64"),
        (_note_with("— alice+example AAAAAAAA\n"), "key name"),
        (b"caf\xe9\n\n\xe2\x80\x94 alice.example/log AAAAAAAA\n", "UTF-8"),
        (_note_with("— alice.example/log AAAAAAAA\r\n"), "control character"),
        (("te\txt\n\n" + "— a AAAAAAAA\n").encode(), "control character"),
        (_note_with("— a AAAAAAAA\n" * 101), "at most 100"),
    ],
)
def test_malformed_notes_are_rejected(note: bytes, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        open_note(note, [ALICE.verifier()])


@pytest.mark.parametrize("text", ["", "no final newline", "tab\there\n", "cr\r\n"])
def test_sign_note_rejects_bad_text(text: str) -> None:
    with pytest.raises(NoteError):
        sign_note(text, [ALICE])


def test_sign_note_needs_a_signer() -> None:
    with pytest.raises(NoteError, match="at least one signer"):
        sign_note(TEXT, [])


_note_text = st.text(
    # Any Unicode scalar value but the ASCII control characters, plus newlines.
    alphabet=st.one_of(st.just("\n"), st.characters(min_codepoint=0x20, codec="utf-8")),
    max_size=200,
).map(lambda text: text + "\n")


@settings(max_examples=60, deadline=None)
@given(_note_text)
def test_any_valid_text_round_trips(text: str) -> None:
    note = sign_note(text, [ALICE, BOB])
    assert open_note(note, [BOB.verifier()]) == (text, [BOB.verifier()])


# --- Checkpoints -----------------------------------------------------------------------------

SPEC_CHECKPOINT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)


def test_spec_example_checkpoint_round_trips() -> None:
    checkpoint = Checkpoint.parse(SPEC_CHECKPOINT)
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert checkpoint.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert checkpoint.extensions == ()
    assert checkpoint.to_text() == SPEC_CHECKPOINT


def test_checkpoint_with_extensions_and_edge_sizes() -> None:
    for size in (0, 1, 2**64 - 1):
        checkpoint = Checkpoint("o", size, bytes(32), ("ext one", "ext two"))
        text = checkpoint.to_text()
        assert text == f"o\n{size}\n{'A' * 43}=\next one\next two\n"
        assert Checkpoint.parse(text) == checkpoint


@pytest.mark.parametrize(
    ("size_line", "message"),
    [
        ("01", "leading zeros"),
        ("00", "leading zeros"),
        ("", "leading zeros"),
        ("+1", "leading zeros"),
        ("-1", "leading zeros"),
        (" 1", "leading zeros"),
        ("1_000", "leading zeros"),
        ("١٢", "leading zeros"),  # Arabic-Indic digits: int() would accept them
        ("0x10", "leading zeros"),
        (str(2**64), "outside"),
        ("9" * 25, "leading zeros"),
    ],
)
def test_checkpoint_sizes_are_strict(size_line: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        Checkpoint.parse(f"origin\n{size_line}\n{'A' * 43}=\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"origin\n1\n{'A' * 42}==\n", "31 bytes"),
        (f"origin\n1\n{'A' * 44}\n", "33 bytes"),
        ("origin\n1\n\n", "base64"),
        ("origin\n1\nnot base64!\n", "base64"),
        (f"origin\n1\n{'A' * 42}B=\n", "base64"),
        ("origin\n1\n", "origin, a tree size and a root hash"),
        ("origin\n", "origin, a tree size and a root hash"),
        (f"origin\n1\n{'A' * 43}=", "newline"),
        (f"\n1\n{'A' * 43}=\n", "origin must not be empty"),
        (f"origin\n1\n{'A' * 43}=\n\n", "extension line must not be empty"),
        (f"origin\n1\n{'A' * 43}=\next\n\nmore\n", "extension line must not be empty"),
        (f"ori\tgin\n1\n{'A' * 43}=\n", "control"),
    ],
)
def test_malformed_checkpoints_are_rejected(text: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        Checkpoint.parse(text)


@pytest.mark.parametrize(
    ("origin", "size", "root_hash", "extensions"),
    [
        ("", 1, bytes(32), ()),
        ("two\nlines", 1, bytes(32), ()),
        ("o", -1, bytes(32), ()),
        ("o", 2**64, bytes(32), ()),
        ("o", 1, bytes(31), ()),
        ("o", 1, bytes(32), ("",)),
        ("o", 1, bytes(32), ("a\nb",)),
    ],
)
def test_checkpoint_constructor_validates(
    origin: str, size: int, root_hash: bytes, extensions: tuple[str, ...]
) -> None:
    with pytest.raises(NoteError):
        Checkpoint(origin, size, root_hash, extensions)


def test_signed_checkpoint_of_a_merkle_log() -> None:
    log = MerkleLog(leaf_hash(bytes([i])) for i in range(10))
    checkpoint = Checkpoint("alice.example/log", log.size, log.root())
    note = sign_note(checkpoint.to_text(), [ALICE, BOB])
    text, signed_by = open_note(note, [ALICE.verifier()])
    assert Checkpoint.parse(text) == checkpoint
    assert signed_by == [ALICE.verifier()]

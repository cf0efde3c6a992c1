"""Signed notes (c2sp.org/signed-note) with Ed25519 and log checkpoints (c2sp.org/tlog-checkpoint).

A signed note is UTF-8 text ending in a newline, a blank line, then one line per signature:

    <text, ending in "\\n">
    <blank line>
    — <key name> base64(4-byte key ID ‖ signature)

The signature covers the text bytes, final newline included. Keys are named and identified by
``SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key)[:4]``; key strings use the Go
``golang.org/x/mod/sumdb/note`` formats so that keys and notes interoperate with Go tooling.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from render_gateway.audit.merkle import HASH_SIZE

ALGORITHM_ED25519 = 0x01
ED25519_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
# The spec asks verifiers to cap signatures (and to accept at least 16); Go's note package uses 100.
MAX_SIGNATURES = 100

_SIGNATURE_PREFIX = "\N{EM DASH} "
_SIGNER_KEY_PREFIX = "PRIVATE+KEY+"
_HEX_KEY_ID = re.compile(r"[0-9a-fA-F]{8}")
# ASCII digits only (str.isdigit and int() accept other scripts), no leading zeros, ≤ 20 digits.
_TREE_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")
_MAX_TREE_SIZE = 2**64 - 1


class NoteError(ValueError):
    """A signed note, key string or checkpoint is malformed, or its signatures do not verify."""


# --- Keys ------------------------------------------------------------------------------------


def key_id(name: str, public_key: Ed25519PublicKey | bytes) -> int:
    """The key ID of an Ed25519 key: the first 4 bytes of SHA-256(name ‖ \\n ‖ 0x01 ‖ key)."""
    _require_key_name(name)
    raw = _public_key_bytes(public_key)
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ALGORITHM_ED25519]) + raw).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class NoteVerifier:
    """A named Ed25519 public key that can check note signatures."""

    name: str
    public_key: bytes  # the raw 32-byte key, so verifiers compare and hash by value
    key_id: int = field(init=False)
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require_key_name(self.name)
        if len(self.public_key) != ED25519_KEY_SIZE:
            raise NoteError(f"an Ed25519 public key is 32 bytes, got {len(self.public_key)}")
        try:
            key = Ed25519PublicKey.from_public_bytes(self.public_key)
        except ValueError as exc:
            raise NoteError(f"not a valid Ed25519 public key: {exc}") from exc
        object.__setattr__(self, "key_id", key_id(self.name, self.public_key))
        object.__setattr__(self, "_key", key)

    @classmethod
    def from_public_key(cls, name: str, public_key: Ed25519PublicKey) -> NoteVerifier:
        return cls(name, public_key.public_bytes_raw())

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (without the key ID) is this key's signature of ``message``."""
        if len(signature) != ED25519_SIGNATURE_SIZE:
            return False
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, eq=False)
class NoteSigner:
    """A named Ed25519 private key that signs notes."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False)
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", key_id(self.name, self.private_key.public_key()))

    def sign(self, message: bytes) -> bytes:
        """The bare 64-byte Ed25519 signature of ``message``."""
        return self.private_key.sign(message)

    def verifier(self) -> NoteVerifier:
        return NoteVerifier.from_public_key(self.name, self.private_key.public_key())


def verifier_key(name: str, public_key: Ed25519PublicKey | bytes) -> str:
    """``<name>+<hex key ID>+<base64(0x01 ‖ key)>``, the Go ``note.NewVerifier`` format."""
    raw = _public_key_bytes(public_key)
    encoded = _b64encode(bytes([ALGORITHM_ED25519]) + raw)
    return f"{name}+{key_id(name, raw):08x}+{encoded}"


def parse_verifier_key(text: str) -> NoteVerifier:
    """Parse a verifier key string, checking that its key ID belongs to its name and key."""
    parts = text.split("+", 2)  # the base64 key may itself contain '+'
    if len(parts) != 3:
        raise NoteError("a verifier key has the form <name>+<key id>+<base64 key>")
    name, hex_id, encoded = parts
    _require_key_name(name)
    raw = _decode_typed_key(encoded, "verifier key")
    verifier = NoteVerifier(name, raw)
    _require_matching_id(hex_id, verifier.key_id)
    return verifier


def signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 ‖ seed)>``, the Go ``note`` signer format.

    This is secret material: store it like a private key file, never log it.
    """
    signer = NoteSigner(name, private_key)
    encoded = _b64encode(bytes([ALGORITHM_ED25519]) + private_key.private_bytes_raw())
    return f"{_SIGNER_KEY_PREFIX}{name}+{signer.key_id:08x}+{encoded}"


def parse_signer_key(text: str) -> NoteSigner:
    """Parse a signer key string (see :func:`signer_key`), checking its key ID."""
    if not text.startswith(_SIGNER_KEY_PREFIX):
        raise NoteError("a signer key starts with PRIVATE+KEY+")
    parts = text[len(_SIGNER_KEY_PREFIX) :].split("+", 2)
    if len(parts) != 3:
        raise NoteError("a signer key has the form PRIVATE+KEY+<name>+<key id>+<base64 key>")
    name, hex_id, encoded = parts
    _require_key_name(name)
    seed = _decode_typed_key(encoded, "signer key")
    signer = NoteSigner(name, Ed25519PrivateKey.from_private_bytes(seed))
    _require_matching_id(hex_id, signer.key_id)
    return signer


def _require_key_name(name: str) -> None:
    # Names end at the first space of a signature line and at the first '+' of a key string.
    if not name:
        raise NoteError("a key name must not be empty")
    if any(char.isspace() or char == "+" or char < " " for char in name):
        raise NoteError(f"key name {name!r} must not contain spaces, '+' or control characters")


def _public_key_bytes(public_key: Ed25519PublicKey | bytes) -> bytes:
    raw = public_key if isinstance(public_key, bytes) else public_key.public_bytes_raw()
    if len(raw) != ED25519_KEY_SIZE:
        raise NoteError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return raw


def _decode_typed_key(encoded: str, what: str) -> bytes:
    """Decode base64(0x01 ‖ 32-byte key) and return the key without its algorithm byte."""
    raw = _b64decode(encoded, what)
    if len(raw) != 1 + ED25519_KEY_SIZE or raw[0] != ALGORITHM_ED25519:
        raise NoteError(f"{what} is not an Ed25519 key (algorithm byte 0x01 and 32 bytes)")
    return raw[1:]


def _require_matching_id(hex_id: str, computed: int) -> None:
    if not _HEX_KEY_ID.fullmatch(hex_id):
        raise NoteError(f"key ID {hex_id!r} is not 8 hexadecimal digits")
    if int(hex_id, 16) != computed:
        raise NoteError(f"key ID {hex_id} does not match the name and key (want {computed:08x})")


# --- Notes -----------------------------------------------------------------------------------


def sign_note(text: str, signers: Sequence[NoteSigner]) -> bytes:
    """The signed note: ``text``, a blank line, then one signature line per signer.

    ``text`` must end in a newline and contain no control characters but newlines. It may
    contain blank lines: readers split at the *last* blank line, and signature lines never
    contain one, so the split is unambiguous.
    """
    _require_note_text(text)
    if not signers:
        raise NoteError("a signed note needs at least one signer")
    if len(signers) > MAX_SIGNATURES:
        raise NoteError(f"at most {MAX_SIGNATURES} signatures fit in a note")
    message = text.encode()
    lines = [_signature_line(signer, message) for signer in signers]
    return (text + "\n" + "".join(lines)).encode()


def open_note(note: bytes, verifiers: Iterable[NoteVerifier]) -> tuple[str, list[NoteVerifier]]:
    """Parse ``note`` and verify it; returns its text and the known keys that signed it.

    Signatures from unknown keys (name and key ID not both known) are ignored, as the spec
    requires. A signature from a known key that fails to verify rejects the whole note: a
    bad signature from a trusted key means tampering, never something to skip. At least one
    signature from a known key must verify.
    """
    known = _index_verifiers(verifiers)
    text, signature_lines = _split_note(note)
    signatures = [_parse_signature_line(line) for line in signature_lines]
    message = text.encode()
    signed_by: list[NoteVerifier] = []
    for name, sig_key_id, signature in signatures:
        verifier = known.get((name, sig_key_id))
        if verifier is None:
            continue
        if not verifier.verify(message, signature):
            raise NoteError(f"the signature by known key {name}+{sig_key_id:08x} does not verify")
        if verifier not in signed_by:
            signed_by.append(verifier)
    if not signed_by:
        names = ", ".join(sorted({f"{name}+{kid:08x}" for name, kid, _ in signatures}))
        raise NoteError(f"the note has no signature from a known key (signed by: {names})")
    return text, signed_by


def _signature_line(signer: NoteSigner, message: bytes) -> str:
    signature = signer.key_id.to_bytes(4, "big") + signer.sign(message)
    return f"{_SIGNATURE_PREFIX}{signer.name} {_b64encode(signature)}\n"


def _require_note_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("note text must be non-empty and end with a newline")
    _require_no_control_characters(text, "note text")


def _require_no_control_characters(text: str, what: str) -> None:
    for position, char in enumerate(text):
        if char < " " and char != "\n":
            raise NoteError(f"{what} has control character {char!r} at offset {position}")


def _index_verifiers(verifiers: Iterable[NoteVerifier]) -> dict[tuple[str, int], NoteVerifier]:
    known: dict[tuple[str, int], NoteVerifier] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_id)
        other = known.setdefault(slot, verifier)
        if other != verifier:  # a name and ID collision between two keys: refuse to guess
            raise NoteError(
                f"two different verifier keys share name and ID {slot[0]}+{slot[1]:08x}"
            )
    return known


def _split_note(note: bytes) -> tuple[str, list[str]]:
    """Split a note at its last blank line into its text and its signature lines."""
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError(f"the note is not valid UTF-8: {exc}") from exc
    _require_no_control_characters(decoded, "the note")
    split = decoded.rfind("\n\n")
    if split < 0:
        raise NoteError("the note has no blank line separating its text from its signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    if not block:
        raise NoteError("the note has no signature lines after its blank line")
    if not block.endswith("\n"):
        raise NoteError("the note's last signature line does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"the note has {len(lines)} signatures; at most {MAX_SIGNATURES} allowed")
    return text, lines


def _parse_signature_line(line: str) -> tuple[str, int, bytes]:
    """``— <name> <base64>`` → (name, key ID, signature without the key ID)."""
    if not line.startswith(_SIGNATURE_PREFIX):
        raise NoteError(f"malformed signature line (no em dash and space): {line[:80]!r}")
    name, space, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    if not space:
        raise NoteError(f"malformed signature line (no space after the key name): {line[:80]!r}")
    _require_key_name(name)
    raw = _b64decode(encoded, f"the signature by {name}")
    if len(raw) < 5:
        raise NoteError(f"the signature by {name} is too short to hold a key ID and a signature")
    return name, int.from_bytes(raw[:4], "big"), raw[4:]


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(encoded: str, what: str) -> bytes:
    """Strict standard base64: padded, no stray characters, and canonical.

    Requiring the canonical form (it re-encodes to the same string) keeps an encoded value
    from having several spellings, so a note or key cannot be altered without changing bytes.
    """
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"{what} is not valid base64: {exc}") from exc
    if not encoded or _b64encode(raw) != encoded:
        raise NoteError(f"{what} is not canonical, non-empty base64")
    return raw


# --- Checkpoints -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A log checkpoint: the note text naming a log (origin), its size and its root hash."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require_line(self.origin, "checkpoint origin")
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise NoteError(f"checkpoint tree size {self.size} is outside 0..2**64-1")
        if len(self.root_hash) != HASH_SIZE:
            raise NoteError(f"checkpoint root hash is {len(self.root_hash)} bytes, not 32")
        for extension in self.extensions:
            _require_line(extension, "checkpoint extension line")

    def to_text(self) -> str:
        """The note text: origin, size, base64 root hash and extension lines, each ending in \\n."""
        lines = [self.origin, str(self.size), _b64encode(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse checkpoint note text strictly (the inverse of :meth:`to_text`)."""
        if not text.endswith("\n"):
            raise NoteError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError("a checkpoint has an origin, a tree size and a root hash line")
        origin, size_line, root_line, *extensions = lines
        if not _TREE_SIZE.fullmatch(size_line):
            raise NoteError(
                f"checkpoint tree size {size_line!r} is not a decimal without leading zeros"
            )
        root_hash = _b64decode(root_line, "checkpoint root hash")
        return cls(origin, int(size_line), root_hash, tuple(extensions))


def _require_line(value: str, what: str) -> None:
    if not value:
        raise NoteError(f"{what} must not be empty")
    if any(char < " " for char in value):
        raise NoteError(f"{what} {value!r} must be one line without control characters")

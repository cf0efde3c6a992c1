"""Backend node keys as the audit trail knows them: a signed note per key, and pinned keys.

The log writes a **node key note** (a C2SP signed note, signed by the log key, at
``log/node-keys/<n>``) the first time it seals a row whose claim a node key verified, before
the batch itself. A verifier without other knowledge trusts those notes (trust on first use);
one that got the backends' keys from their operators pins them with a **node keys file** —
one key per line, ``<key id> <base64 public key>`` or just the base64 key, ``#`` comments —
and every claim signed by any other key is named.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from render_gateway.audit.signed_note import (
    NoteError,
    NoteSigner,
    NoteVerifier,
    open_note,
    sign_note,
)
from render_gateway.signing_keys import key_id as key_id_of
from render_gateway.stores.objects import ObjectStore

NODE_KEYS_PREFIX = "log/node-keys/"
NOTE_HEADER = "render-gateway audit node key"


class NodeKeyError(ValueError):
    """A node key note or a node keys file line that is not one."""


@dataclass(frozen=True)
class NodeKey:
    key_id: str
    public_key: str  # base64 of the raw Ed25519 key, as attestation rows carry it
    backend: str = "-"  # the gateway's name for the backend that first used it
    first_seen_us: int = 0

    def note_text(self) -> str:
        return (
            f"{NOTE_HEADER}\nkey_id {self.key_id}\npublic_key {self.public_key}\n"
            f"backend {self.backend}\nfirst_seen_us {self.first_seen_us}\n"
        )

    @classmethod
    def parse_note_text(cls, text: str) -> NodeKey:
        lines = text.rstrip("\n").split("\n")
        if not lines or lines[0] != NOTE_HEADER:
            raise NodeKeyError("not a node key note")
        fields = dict(line.partition(" ")[::2] for line in lines[1:])
        try:
            key = cls(
                fields["key_id"], fields["public_key"], fields["backend"],
                int(fields["first_seen_us"]),
            )  # fmt: skip
        except (KeyError, ValueError) as exc:
            raise NodeKeyError(f"a node key note without a valid {exc}") from exc
        _check(key.key_id, key.public_key)
        return key


def note_key(index: int) -> str:
    return f"{NODE_KEYS_PREFIX}{index:020d}"


def sign_node_key_note(key: NodeKey, signer: NoteSigner) -> bytes:
    return sign_note(key.note_text(), [signer])


def recorded_node_keys(
    objects: ObjectStore, verifiers: Sequence[NoteVerifier]
) -> tuple[list[NodeKey], list[tuple[str, str]]]:
    """The node keys the log recorded, in order, and (where, what) for every note that does
    not verify with the log's keys or does not hold a key."""
    keys: list[NodeKey] = []
    problems: list[tuple[str, str]] = []
    for name in objects.list(NODE_KEYS_PREFIX):
        where = f"node key note {name.removeprefix(NODE_KEYS_PREFIX).lstrip('0') or '0'}"
        try:
            text, _ = open_note(objects.get(name), verifiers)
            keys.append(NodeKey.parse_note_text(text))
        except (NoteError, NodeKeyError) as exc:
            problems.append((where, f"does not verify: {exc}"))
    return keys, problems


def read_pinned(path: Path) -> dict[str, str]:
    """A node keys file as key id → base64 public key; OSError or NodeKeyError naming the line."""
    pinned: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.partition("#")[0].split()
        if not words:
            continue
        try:
            if len(words) > 2:
                raise NodeKeyError("expected '<key id> <base64 public key>' or the key alone")
            public_key = words[-1]
            key_id = _check(words[0] if len(words) == 2 else None, public_key)
        except NodeKeyError as exc:
            raise NodeKeyError(f"{path}:{number}: {exc}") from exc
        pinned[key_id] = public_key
    return pinned


def pinned_line(key: NodeKey) -> str:
    """``key`` as a node keys file line (with where the log first saw it, as a comment)."""
    return f"{key.key_id} {key.public_key}  # backend {key.backend}, first seen {key.first_seen_us}"


def _check(key_id: str | None, public_key: str) -> str:
    """The key id of ``public_key`` (base64 raw Ed25519), which must equal ``key_id`` if given."""
    try:
        raw = base64.b64decode(public_key, validate=True)
        actual = key_id_of(Ed25519PublicKey.from_public_bytes(raw))
    except (binascii.Error, ValueError) as exc:
        raise NodeKeyError(f"not a base64 Ed25519 public key: {public_key[:60]!r}") from exc
    if key_id is not None and key_id != actual:
        raise NodeKeyError(f"key id {key_id} is not the id of its key ({actual})")
    return actual

"""The log's signing key: created once (mode 0600), loaded at every start; rotation signs the
new key with the old, so a verifier who trusts the first key can follow every later one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.audit.signed_note import (
    NoteError,
    NoteSigner,
    NoteVerifier,
    open_note,
    parse_verifier_key,
    sign_note,
    verifier_key,
)
from render_gateway.signing_keys import (
    KeyFileError,
    load_key,
    load_or_create_key,
    write_private_key,
)
from render_gateway.stores.objects import ObjectStore

KEY_FILE = Path("audit") / "log.key"
ROTATIONS_PREFIX = "log/keys/"
ROTATION_HEADER = "render-gateway audit log key rotation"


def load_signer(data_dir: Path, origin: str, key_file: Path | None = None) -> NoteSigner:
    """The log's signer: the key in ``key_file`` (``[gateway.audit] key_file``; it must exist,
    mode 0600: replicas share it, so none may create its own), else the data dir's own key,
    created on first use."""
    if key_file is None:
        return NoteSigner(origin, load_or_create_key(Path(data_dir) / KEY_FILE))
    if not key_file.is_file():
        raise KeyFileError(
            f"gateway.audit.key_file: {key_file} does not exist (copy a replica's "
            f"<data_dir>/{KEY_FILE} there, or make one: openssl genpkey -algorithm ed25519)"
        )
    return NoteSigner(origin, load_key(key_file))


def public_key_line(signer: NoteSigner) -> str:
    """The verifier key a third party needs: ``<origin>+<key id>+<base64 key>``."""
    return verifier_key(signer.name, signer.private_key.public_key())


def rotate(data_dir: Path, origin: str, objects: ObjectStore) -> tuple[str, str]:
    """Replace the log key; the rotation note (signed by the old and the new key) is stored in
    the log's object store. Returns (old verifier key, new verifier key)."""
    path = Path(data_dir) / KEY_FILE
    old = load_signer(data_dir, origin)
    new = NoteSigner(origin, Ed25519PrivateKey.generate())
    rotations = objects.list(ROTATIONS_PREFIX)
    text = f"{ROTATION_HEADER}\nold {public_key_line(old)}\nnew {public_key_line(new)}\n"
    objects.put_new(f"{ROTATIONS_PREFIX}{len(rotations):020d}", sign_note(text, [old, new]))
    retired = path.with_name(f"log.key.retired-{len(rotations)}")
    path.rename(retired)
    write_private_key(path, new.private_key)
    return public_key_line(old), public_key_line(new)


def trusted_verifiers(objects: ObjectStore, trusted: Sequence[NoteVerifier]) -> list[NoteVerifier]:
    """``trusted`` plus every key a rotation note signed by a trusted key names (the key it
    replaced and the key that replaced it), until nothing more is learned."""
    keys = list(trusted)
    notes = [objects.get(key) for key in objects.list(ROTATIONS_PREFIX)]
    learned = True
    while learned:
        learned = False
        for note in notes:
            try:
                text, signed_by = open_note(note, keys)
            except NoteError:
                continue  # no trusted key signed it (yet): its keys stay untrusted
            lines = text.rstrip("\n").split("\n")
            if lines[0] != ROTATION_HEADER or not signed_by:
                continue
            for line in lines[1:]:
                _, _, vkey = line.partition(" ")
                candidate = parse_verifier_key(vkey)
                if candidate not in keys:
                    keys.append(candidate)
                    learned = True
    return keys

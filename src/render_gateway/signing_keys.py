"""Ed25519 key files: created once with mode 0600, refused when others can read them."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class KeyFileError(RuntimeError):
    """A key file exists but cannot be trusted or read."""


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 8 bytes of SHA-256 over the raw public key, in hex."""
    return hashlib.sha256(public_key_bytes(public_key)).hexdigest()[:16]


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Load the key at ``path``, or create it (O_EXCL, mode 0600) if there is none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        try:
            write_private_key(path, key)
        except FileExistsError:
            return load_key(path)  # another process created it first; use theirs
        return key
    return load_key(path)


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write ``key`` as PEM to a new file created with mode 0600 (FileExistsError if present)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())


def load_key(path: Path) -> Ed25519PrivateKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{path} has mode {mode:04o}; a private key must not be readable by group or "
            f"others (chmod 600 {path})"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # TypeError: encrypted
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key

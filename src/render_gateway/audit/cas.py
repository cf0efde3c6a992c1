"""A content-addressed store: blobs keyed by the BLAKE3 of their bytes, on any ObjectStore.

Keys fan out on the digest's first byte (``blobs/ab/ab…``) so that no directory or listing
page holds every blob. The key is the claim: every read re-hashes, so a blob altered at rest
is reported as an :class:`IntegrityError` instead of being served.
"""

from __future__ import annotations

import re

from blake3 import blake3

from render_gateway.stores.objects import ObjectExists, ObjectStore, ObjectStoreError

DEFAULT_PREFIX = "blobs/"

_DIGEST = re.compile(r"[0-9a-f]{64}")


class IntegrityError(ObjectStoreError):
    """The bytes stored under a content address do not hash to it."""


def digest_of(data: bytes) -> str:
    """The content address of ``data``: its BLAKE3 hash in lowercase hex."""
    return blake3(data).hexdigest()


def check_digest(digest: str) -> str:
    """``digest`` if it is 64 lowercase hex characters; otherwise ValueError."""
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"not a BLAKE3 digest (64 lowercase hex characters): {digest!r}")
    return digest


class ContentStore:
    """Create-only blobs under ``prefix`` in ``objects``, addressed by BLAKE3."""

    def __init__(self, objects: ObjectStore, prefix: str = DEFAULT_PREFIX) -> None:
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"a content store prefix must end with '/': {prefix!r}")
        self.objects = objects
        self.prefix = prefix

    def key_of(self, digest: str) -> str:
        check_digest(digest)
        return f"{self.prefix}{digest[:2]}/{digest}"

    def put(self, data: bytes) -> str:
        """Store ``data``; its digest. Storing the same bytes again is a no-op."""
        digest = digest_of(data)
        key = self.key_of(digest)
        try:
            self.objects.put_new(key, data)
        except ObjectExists as error:
            # Bytes that differ from ours yet sit under our hash: the stored copy is corrupt.
            raise IntegrityError(
                f"{key!r} in {self.objects.url} holds bytes that do not hash to its key"
            ) from error
        return digest

    def get(self, digest: str) -> bytes:
        """The blob with ``digest``, verified; ObjectMissing if absent, IntegrityError if the
        stored bytes hash to something else."""
        key = self.key_of(digest)
        data = self.objects.get(key)
        actual = digest_of(data)
        if actual != digest:
            raise IntegrityError(
                f"{key!r} in {self.objects.url} does not hash to its key (BLAKE3 {actual})"
            )
        return data

    def exists(self, digest: str) -> bool:
        return self.objects.exists(self.key_of(digest))

    def list(self) -> list[str]:
        """The digests of every stored blob, sorted."""
        digests = []
        for key in self.objects.list(self.prefix):
            digest = key[len(self.prefix) :].rpartition("/")[2]
            # Only keys in the fan-out layout are blobs; anything else under the prefix is not
            # a content address and has no digest to report.
            if _DIGEST.fullmatch(digest) and key == self.key_of(digest):
                digests.append(digest)
        return digests

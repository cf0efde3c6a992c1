"""The audit store as of one signed size: a read-only view for verifying a log that grows.

The log writes a batch's leaf before the checkpoint that covers it, so a verifier listing a live
store can see a leaf no checkpoint signs yet, or (listing checkpoints after leaves) a checkpoint
larger than the leaves it listed: both would read as tampering. This view hides the leaves from
``size`` on and the checkpoints above ``size``, so a verification sees the log exactly as its
latest checkpoint at the start signed it. Everything else reads through unchanged.
"""

from __future__ import annotations

from render_gateway.audit.leaves import CHECKPOINTS_PREFIX, LEAVES_PREFIX, index_of
from render_gateway.stores.objects import ObjectStore, ObjectStoreError


def latest_checkpoint_size(objects: ObjectStore) -> int:
    """The size the newest stored checkpoint is filed under (0 when there is none)."""
    for key in reversed(objects.list(CHECKPOINTS_PREFIX)):
        try:
            return index_of(key, CHECKPOINTS_PREFIX)
        except ValueError:
            continue  # a stray key: verify names it
    return 0


class LogAsOf:
    """``objects`` with the log cut at ``size`` leaves. Writes are refused."""

    def __init__(self, objects: ObjectStore, size: int) -> None:
        self._objects, self.size, self.url = objects, size, objects.url

    def list(self, prefix: str) -> list[str]:
        keys = self._objects.list(prefix)
        if prefix == LEAVES_PREFIX:
            return [k for k in keys if not _numbered_at_least(k, LEAVES_PREFIX, self.size)]
        if prefix == CHECKPOINTS_PREFIX:
            return [k for k in keys if not _numbered_at_least(k, CHECKPOINTS_PREFIX, self.size + 1)]
        return keys

    def get(self, key: str) -> bytes:
        return self._objects.get(key)

    def exists(self, key: str) -> bool:
        return self._objects.exists(key)

    def put_new(self, key: str, data: bytes) -> bool:
        raise ObjectStoreError(f"a verification writes nothing (asked to write {key})")


def _numbered_at_least(key: str, prefix: str, bound: int) -> bool:
    """Whether ``key`` is a well-formed numbered key at or past ``bound`` (a malformed key is
    kept, for verify to name)."""
    try:
        return index_of(key, prefix) >= bound
    except ValueError:
        return False

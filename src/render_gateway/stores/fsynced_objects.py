"""A local-directory :class:`ObjectStore` whose writes are on disk when ``put_new`` returns.

obstore's ``LocalStore`` (0.12) writes a staging file and hard-links it into place without
``fsync``: after a power loss a key can exist with no bytes, or vanish, although the put
returned. This wrapper fsyncs the object and every directory from its parent up to the root
after each put, so an asset's bytes are durable before its record is written, and its record
before the job that names it is marked done.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path

from render_gateway.stores.objects import ObjectStore


class FsyncedLocalObjects:
    """:class:`ObjectStore` over ``objects`` (a ``file://`` store rooted at ``root``)."""

    def __init__(self, objects: ObjectStore, root: Path) -> None:
        self.url = objects.url
        self._objects = objects
        self._root = root

    def put_new(self, key: str, data: bytes) -> bool:
        created = self._objects.put_new(key, data)
        # Also when identical bytes were already there: a racing writer may not have synced yet.
        self._sync(key)
        return created

    def get(self, key: str) -> bytes:
        return self._objects.get(key)

    def exists(self, key: str) -> bool:
        return self._objects.exists(key)

    def list(self, prefix: str) -> builtins.list[str]:
        return self._objects.list(prefix)

    def _sync(self, key: str) -> None:
        target = self._root / key
        fsync_path(target)
        # A new key may have made new directories: each one's entry lives in its parent.
        for directory in target.relative_to(self._root).parents:
            fsync_path(self._root / directory)

    def __repr__(self) -> str:
        return f"FsyncedLocalObjects({self.url!r})"


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

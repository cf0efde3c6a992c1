"""A local-directory :class:`ObjectStore` written with plain POSIX calls, durable on return.

The assets' ``file://`` store (every request writes two objects: its bytes and its record).
obstore's ``LocalStore`` (0.12) neither fsyncs nor is cheap for small objects from Python (a
staging file, a hard link, then a separate open to fsync); here one write is: a temporary
file in the key's directory, written and fsynced, hard-linked into place (``link`` fails if the
key exists: create-only, and a reader never sees a partial object), then the directory fsynced
so the new entry survives a power loss (and each directory the put had to create, in its
parent). A 1 KB put costs about half what obstore's store plus a separate fsync of every
directory did (docs/BENCHMARKS.md, issue 11).

The layout is the obstore one (a key is a relative path under the root), so a directory either
wrote is read by the other; temporary files (``.tmp-…``, and obstore's ``key#N`` staging files)
are never listed.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import tempfile
from pathlib import Path

from render_gateway.stores.objects import ObjectExists, ObjectMissing, ObjectStoreError

_TEMP_PREFIX = ".tmp-"


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_staging(name: str) -> bool:
    return name.startswith(_TEMP_PREFIX) or "#" in name


class LocalDirectoryObjects:
    """:class:`ObjectStore` over the directory ``root`` (created if absent)."""

    def __init__(self, root: Path, url: str | None = None) -> None:
        self.root = root
        self.url = url or root.absolute().as_uri()
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ObjectStoreError(f"invalid object key {key!r}")
        if _is_staging(parts[-1]):
            raise ObjectStoreError(f"invalid object key {key!r} (a staging name)")
        return self.root.joinpath(*parts)

    def put_new(self, key: str, data: bytes) -> bool:
        target = self._path(key)
        if target.is_file():  # taken (equal outputs share their bytes): no write, no fsync
            return self._same(key, target, data)
        self._make_directories(target.parent)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=_TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temp, target)  # fails if the key exists: never overwrite
        except FileExistsError:  # a racing writer linked it first
            return self._same(key, target, data)
        except OSError as error:
            raise ObjectStoreError(f"put {key!r} in {self.url} failed: {error}") from error
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        fsync_path(target.parent)  # the new entry lives in its directory
        return True

    def _same(self, key: str, target: Path, data: bytes) -> bool:
        """False when ``target`` holds ``data``; ObjectExists when it holds other bytes."""
        existing = self._read(key, target)
        if existing != data:
            raise ObjectExists(
                f"{key!r} in {self.url} already holds different bytes ({len(existing)} "
                f"stored, {len(data)} offered); it is never overwritten"
            )
        return False

    def _make_directories(self, directory: Path) -> None:
        """Create ``directory`` and any missing parents, each new entry synced in its parent."""
        missing: list[Path] = []
        while not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for new in reversed(missing):
            with contextlib.suppress(FileExistsError):  # a racing writer made it first
                new.mkdir()
            fsync_path(new.parent)

    def _read(self, key: str, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):  # a prefix: none
            raise ObjectMissing(f"no object at {key!r} in {self.url}") from None
        except OSError as error:
            raise ObjectStoreError(f"get {key!r} in {self.url} failed: {error}") from error

    def get(self, key: str) -> bytes:
        return self._read(key, self._path(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> builtins.list[str]:
        directory = prefix.rpartition("/")[0]
        start = self.root.joinpath(*directory.split("/")) if directory else self.root
        keys: builtins.list[str] = []
        for folder, _dirs, files in os.walk(start):
            relative = Path(folder).relative_to(self.root).as_posix()
            base = "" if relative == "." else relative + "/"
            keys.extend(
                base + name
                for name in files
                if not _is_staging(name) and (base + name).startswith(prefix)
            )
        return sorted(keys)

    def __repr__(self) -> str:
        return f"LocalDirectoryObjects({self.url!r})"

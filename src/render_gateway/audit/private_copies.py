"""Private copies of verified bytes, for a reader that opens files by path (DuckDB's Parquet
reader): it then parses exactly the bytes that were hashed, never the store's file again, which
could have changed in between.

A fixed number of slots, each a file only this process writes, rewritten in place for each
blob: on Linux an anonymous memory file (``memfd_create``, opened by the reader as
``/proc/self/fd/N``), elsewhere a file of mode 0600 in a private scratch directory. Rewriting a
slot reuses its pages; a fresh file per blob (written, read, unlinked) cost reconcile's cold
read about 0.4 CPU-s more over 1.28 GB of batches, in the kernel's page allocation and ext4's
bookkeeping (docs/BENCHMARKS.md, reconcile).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType


def _memory_files() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class PrivateCopies:
    """``slots`` private files; :meth:`write` puts bytes in one and returns the path a reader
    opens. A slot must not be rewritten while a reader may still be reading it: the caller
    waits for the read of its last contents first. Closed (every slot freed) on exit."""

    def __init__(self, slots: int, scratch: Path, *, memory: bool | None = None) -> None:
        self._memory = _memory_files() if memory is None else memory
        self._scratch = scratch
        self._fds: list[int | None] = [None] * slots
        self._paths: list[str] = [""] * slots

    def write(self, slot: int, data: bytes | memoryview) -> str:
        fd = self._fds[slot]
        if fd is None:
            fd = self._open(slot)
        os.ftruncate(fd, len(data))
        view = memoryview(data)
        done = 0
        while done < len(view):
            written = os.pwrite(fd, view[done:], done)
            if written == 0:  # never for a regular or memory file; not a reason to spin
                raise OSError(f"no progress writing private copy {slot}")
            done += written
        return self._paths[slot]

    def _open(self, slot: int) -> int:
        if self._memory:
            fd = os.memfd_create(f"render-private-copy-{slot}", os.MFD_CLOEXEC)
            path = f"/proc/self/fd/{fd}"
        else:
            path = str(self._scratch / f"copy-{slot}")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._fds[slot], self._paths[slot] = fd, path
        return fd

    def close(self) -> None:
        for slot, fd in enumerate(self._fds):
            if fd is None:
                continue
            os.close(fd)
            if not self._memory:
                os.unlink(self._paths[slot])
            self._fds[slot] = None

    def __enter__(self) -> PrivateCopies:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

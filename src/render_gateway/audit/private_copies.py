"""Private copies of verified bytes, for a reader that opens files by path (DuckDB's Parquet
reader): it then parses exactly the bytes that were hashed, never the store's file again, which
could have changed in between.

A fixed number of slots, each a file only this process writes, rewritten in place for each
blob: on Linux an anonymous memory file (``memfd_create``, opened by the reader as
``/proc/self/fd/N``; its descriptor is the file, so it stays open until :meth:`close`),
elsewhere — or where the call is refused, as a sandbox may — a file of mode 0600 in a private
scratch directory, opened for each write only. Rewriting a slot reuses its pages; a fresh file
per blob (written, read, unlinked) cost reconcile's cold read about 0.4 CPU-s more over 1.28 GB
of batches, in the kernel's page allocation and ext4's bookkeeping (docs/BENCHMARKS.md,
reconcile). The slots are never memory-mapped here: nothing can touch a page past a file's end.
"""

from __future__ import annotations

import contextlib
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
        self._memory_fds: list[int | None] = [None] * slots  # the memory files, kept open
        self._paths: list[str] = [""] * slots

    def write(self, slot: int, data: bytes | memoryview) -> str:
        if not self._paths[slot]:
            self._create(slot)
        fd = self._memory_fds[slot]
        if fd is not None:
            _rewrite(fd, data)
            return self._paths[slot]
        fd = os.open(self._paths[slot], os.O_WRONLY | os.O_CLOEXEC)
        try:
            _rewrite(fd, data)
        finally:
            os.close(fd)
        return self._paths[slot]

    def _create(self, slot: int) -> None:
        if self._memory:
            try:
                fd = os.memfd_create(f"render-private-copy-{slot}", os.MFD_CLOEXEC)
            except OSError:  # refused (ENOSYS, EPERM under a seccomp filter): files from now on
                self._memory = False
            else:
                self._memory_fds[slot], self._paths[slot] = fd, f"/proc/self/fd/{fd}"
                return
        path = str(self._scratch / f"copy-{slot}")
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        self._paths[slot] = path

    def close(self) -> None:
        """Frees every slot, each even if another fails (a scratch file already removed is no
        error: the scratch directory is the caller's to delete)."""
        for slot, path in enumerate(self._paths):
            fd = self._memory_fds[slot]
            self._memory_fds[slot], self._paths[slot] = None, ""
            if fd is not None:
                os.close(fd)
            elif path:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def __enter__(self) -> PrivateCopies:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def _rewrite(fd: int, data: bytes | memoryview) -> None:
    """The file of ``fd`` holds exactly ``data`` (its pages beyond are freed, those within are
    reused)."""
    os.ftruncate(fd, len(data))
    view = memoryview(data)
    done = 0
    while done < len(view):
        written = os.pwrite(fd, view[done:], done)
        if written == 0:  # never for a regular or memory file; not a reason to spin
            raise OSError("no progress writing a private copy")
        done += written

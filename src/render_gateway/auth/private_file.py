"""Create a file only its owner can read, in a directory only its owner can enter."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (its directory 0700) unless it exists already.

    An existing file or directory keeps the mode its owner gave it. SQLite creates its -wal and
    -shm files with the database file's mode, so they are private too.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        # O_EXCL + mode at creation: there is no moment at which the file is world-readable.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def read_private_text(path: Path) -> str:
    """A secret from a file that only its owner can read; refused (naming the file) otherwise."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(f"{path} holds a secret but has mode {mode:o}; chmod 600 it")
    return path.read_text().strip()

"""Create a file only its owner can read, in a directory only its owner can enter."""

from __future__ import annotations

import os
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

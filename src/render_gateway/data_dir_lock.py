"""One ``serve`` per data directory: an exclusive ``flock`` on ``<data_dir>/serve.lock``.

Two gateways on one data dir would both run crash recovery on the same job store and requeue
each other's running jobs (whose compute then goes unbilled), so ``serve`` takes this lock
before it opens anything and holds it until the process ends. The kernel releases it when the
process dies, ``kill -9`` included, so a stale file never blocks a restart; the pid written
inside only names the holder in the refusal. The other commands (``keys``, ``usage``,
``audit``, ``reconcile``) do not take it: they open the stores the way they always did.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "serve.lock"


class DataDirBusy(Exception):
    """Another process holds the data dir's lock."""

    def __init__(self, data_dir: Path, holder_pid: int | None) -> None:
        holder = f"pid {holder_pid}" if holder_pid is not None else "a process"
        super().__init__(
            f"data dir {data_dir} is in use by another render-gateway serve ({holder}); "
            f"stop it first (lock: {data_dir / LOCK_FILE})"
        )
        self.holder_pid = holder_pid


@dataclass
class DataDirLock:
    path: Path
    fd: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)  # closing the only descriptor drops the flock


def _holder_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None  # the holder has not written its pid yet (it just took the lock)


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Take the data dir's lock or raise ``DataDirBusy`` naming the holder's pid. The
    descriptor is not inherited by children (PEP 446), so a worker started by ``serve``
    never keeps the lock alive after its parent is gone."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_pid(fd)
        os.close(fd)
        raise DataDirBusy(data_dir, holder) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DataDirLock(path, fd)

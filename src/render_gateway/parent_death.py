"""A child process that dies with its parent.

``serve`` starts a demo worker (~500 MB and a port); if ``serve`` is killed with ``kill -9``
nothing of its own runs, so the kernel must end the child: Linux's ``PR_SET_PDEATHSIG`` sends
it SIGKILL when the parent goes. As a belt (another OS, or the signal lost to the race where
the parent dies between fork and prctl) the worker also watches its parent pid and stops when
it changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _resolve_prctl() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):  # not Linux: the parent watch alone covers it
        return None
    return prctl


# Resolved once in the parent: a preexec function must not load libraries after fork.
_PRCTL = _resolve_prctl()


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent (the thread that forked it)
    ends. Meant as ``Popen(preexec_fn=die_with_parent)``; does nothing where prctl is absent."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def exit_when_parent_exits(
    parent_pid: int, every: float = 0.5, grace: float = 10.0
) -> threading.Thread:
    """Watch from a daemon thread: once our parent is no longer ``parent_pid`` (it died and
    we were re-parented), SIGTERM ourselves for a clean stop, and exit outright if that has
    not happened within ``grace`` seconds."""
    die_with_parent()  # also covers a launcher that did not set it before exec

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every)
        log.warning("parent process %d is gone: stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(1)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread

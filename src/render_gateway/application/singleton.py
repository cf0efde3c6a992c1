"""Singleton roles: a role (the metering writer, the audit sequencer, the reconciler) runs only
while this process holds its lease, so that with shared stores exactly one replica runs it.

The lease is tried every third of its time to live and, once held, renewed at the same pace. A
renewal that fails, errors or takes longer than that third means the lease may be lost: the role
is stopped at once, before the lease can have expired for anyone else (two thirds of the ttl are
still left then), and the loop goes back to trying.

``token`` is the lease's fencing token from when this process won it (None while the role does
not run): a later holder's token is higher, so what the role writes can be refused once it is
stale.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

from render_gateway.stores.leases import LeaseStore

log = logging.getLogger(__name__)


def process_holder_id() -> str:
    """``host:pid:random``: names this process in a lease (readable in ``holder()``); the random
    part keeps a restarted process that reuses a pid from renewing its predecessor's lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class SingletonRole:
    def __init__(
        self,
        leases: LeaseStore,
        name: str,
        holder: str,
        ttl_seconds: float,
        start: Callable[[], Awaitable[None]],
        stop: Callable[[], Awaitable[None]],
    ) -> None:
        if not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be positive, not {ttl_seconds!r}")
        self.leases, self.name, self.holder = leases, name, holder
        self.ttl_seconds = ttl_seconds
        self._start, self._stop = start, stop
        # True from the moment start() is called until stop() is: ``stop`` must cope with a
        # start that was interrupted (by close) before it finished.
        self.active = False
        # The lease's fencing token, noted when the lease was won; None while not active.
        self.token: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def interval(self) -> float:
        return self.ttl_seconds / 3

    async def run(self) -> None:
        """Try for the lease, run the role while it is held, until ``close``. Cancelling this
        task alone leaves the lease to expire (as a crash would); ``close`` hands it back."""
        if self._closed:
            return
        self._task = asyncio.current_task()
        while not self._closed:
            began = time.monotonic()
            held = await self._try_lease()
            if held and not self.active:
                log.info("lease %s taken by %s: starting the role", self.name, self.holder)
                await self._start_role()
            elif not held and self.active:
                log.warning("lease %s lost by %s: stopping the role", self.name, self.holder)
                await self._stop_role()
            # Paced from the start of the last try, so a slow start() does not delay renewal.
            await asyncio.sleep(max(0.0, began + self.interval - time.monotonic()))

    async def try_once(self) -> bool:
        """One try for the lease now, starting the role if it is won (``run`` then keeps it).
        Unlike ``run``, an exception from ``start`` propagates, the lease handed back: a
        process that cannot run its role at start (another owns the embedded usage store)
        refuses to start, saying why."""
        if self._closed or not await self._try_lease():
            return False
        self.active = True
        try:
            await self._start()
        except BaseException:
            self.active = False
            self.token = None
            await self._release()
            raise
        return True

    async def _try_lease(self) -> bool:
        try:
            # A renewal slower than a third of the ttl counts as lost: waiting longer could
            # let the lease expire while this process still runs the role.
            return await asyncio.wait_for(self._acquire(), self.interval)
        except Exception:  # the store is unreachable: the lease cannot be vouched for
            log.exception("lease %s: acquire by %s failed", self.name, self.holder)
            return False

    async def _acquire(self) -> bool:
        if not await self.leases.acquire(self.name, self.holder, self.ttl_seconds):
            return False
        if not self.active:  # won (not renewed): note this holding's fencing token
            token = await self.leases.token(self.name, self.holder)
            if token is None:  # lost again already: try later
                return False
            self.token = token
        return True

    async def _start_role(self) -> None:
        self.active = True
        try:
            await self._start()
        except Exception:  # let another process (or this one's next try) run it instead
            log.exception("lease %s: starting the role failed; handing the lease back", self.name)
            await self._stop_role()
            await self._release()

    async def _stop_role(self) -> None:
        self.active = False
        self.token = None
        try:
            await self._stop()
        except Exception:  # the loop must go on trying for the lease
            log.exception("lease %s: stopping the role failed", self.name)

    async def close(self) -> None:
        """Stop the loop, stop the role if it runs, and release the lease for another process
        to take at once (rather than after it expires)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            await asyncio.wait([task])  # its end, whatever it was; raises only if we are cancelled
        try:
            if self.active:
                self.active = False
                self.token = None
                await self._stop()
        finally:
            await self._release()

    async def _release(self) -> None:
        try:
            await self.leases.release(self.name, self.holder)
        except Exception:  # the store is unreachable: the lease expires on its own
            log.exception("lease %s: release by %s failed", self.name, self.holder)

"""Where this process's usage reads are answered: here, or by the replica holding ``metering``.

The embedded usage store (chDB) opens in one process only: the one running the metering role,
that is holding the ``metering`` lease. Every other replica's reads would fail on its lock, so
they ask the holder instead (api/usage_relay.py carries the request). To know where the holder
is, each replica's lease holder id carries its advertise URL: ``host:pid:random@url``. The part
before the ``@`` still names one process (the fencing tokens in stores/leases.py change hands
with it); the URL only says where that process listens.

While the holder cannot be asked (none is known, or it does not answer: a crash leaves its
lease held until it expires, which a restart on the same data dir meets at once), a process that
may run the metering role reads the store itself: the holder's lock on it is gone with it, and
the store this process opens is the one its own writer will share once it wins the lease. A
process without that role never opens the embedded store, so it can never keep it from the
replicas that write it.

A ClickHouse server takes any number of clients: there every replica reads it itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from render_gateway.config import check_advertise_url
from render_gateway.stores.leases import LeaseStore

log = logging.getLogger(__name__)

METERING_LEASE = "metering"
# The lease store is asked on every usage read on a replica that does not hold metering: a
# store slower than this counts as no holder known (503, retry), not as a hung request.
LOOKUP_TIMEOUT_SECONDS = 2.0


def derived_advertise_url(host: str, port: int) -> str:
    """``http://host:port`` from serve's bind address; a wildcard address (0.0.0.0, ::, "")
    names no host another replica could reach, so the machine's hostname stands for it."""
    try:
        address = ipaddress.ip_address(host) if host else None
    except ValueError:  # a name, not an address
        address = None
    if not host or (address is not None and address.is_unspecified):
        shown = socket.gethostname()
    elif address is not None and address.version == 6:
        shown = f"[{host}]"
    else:
        shown = host
    return check_advertise_url(f"http://{shown}:{port}")


def holder_with_url(process_id: str, advertise_url: str) -> str:
    """The lease holder id that names this process and says where it listens."""
    return f"{process_id}@{advertise_url}"


def url_of_holder(holder: str) -> str | None:
    """The advertise URL a holder id carries; None for one without (or with a malformed) URL.
    A process id holds no ``@`` (host names cannot), so the first one ends it."""
    _, at, url = holder.partition("@")
    if not at:
        return None
    try:
        return check_advertise_url(url)
    except ValueError:
        return None


@dataclass(frozen=True)
class UsageReadPlace:
    """``here``: read the usage store in this process. Otherwise ``holder_url`` is the base URL
    of the replica holding metering, or None while no holder is known; ``here_if_unanswered``:
    when the holder cannot be asked, read here rather than refuse."""

    here: bool
    holder_url: str | None = None
    here_if_unanswered: bool = False


HERE = UsageReadPlace(here=True)


class UsageReadLocator:
    """Says, for each usage read, where it is answered (see the module's doc)."""

    def __init__(
        self,
        leases: LeaseStore,
        own_holder: str,
        embedded_store: bool,
        runs_metering: Callable[[], bool],
        may_run_metering: bool,
    ) -> None:
        self._leases, self._own_holder = leases, own_holder
        self._embedded_store, self._runs_metering = embedded_store, runs_metering
        self._may_run_metering = may_run_metering

    async def locate(self) -> UsageReadPlace:
        if not self._embedded_store or self._runs_metering():
            return HERE
        try:
            holder = await asyncio.wait_for(
                self._leases.holder(METERING_LEASE), LOOKUP_TIMEOUT_SECONDS
            )
        except Exception:  # the lease store is unreachable: no holder can be vouched for
            log.warning("usage reads: the metering lease's holder could not be read", exc_info=True)
            holder = None
        if holder == self._own_holder:  # won, the writer still starting: it is this process
            return HERE
        url = None if holder is None else url_of_holder(holder)
        if url is None and self._may_run_metering:
            return HERE
        return UsageReadPlace(False, url, here_if_unanswered=self._may_run_metering)

"""Where usage reads are answered: the advertise URL's form, the holder id that carries it, and
the locator on a real lease store (here, the holder's URL, or no holder known)."""

from __future__ import annotations

import socket

import pytest

from render_gateway.application.singleton import process_holder_id
from render_gateway.application.usage_holder import (
    METERING_LEASE,
    UsageReadLocator,
    UsageReadPlace,
    derived_advertise_url,
    holder_with_url,
    url_of_holder,
)
from render_gateway.config import GatewayConfig
from render_gateway.stores.memory_leases import MemoryLeaseStore


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("127.0.0.1", 8080, "http://127.0.0.1:8080"),
        ("gw-3.internal", 81, "http://gw-3.internal:81"),
        ("::1", 8080, "http://[::1]:8080"),
        ("0.0.0.0", 9000, f"http://{socket.gethostname()}:9000"),
        ("::", 9000, f"http://{socket.gethostname()}:9000"),
    ],
)
def test_the_derived_url_is_the_bind_address_or_the_hostname_for_a_wildcard(
    host: str, port: int, url: str
) -> None:
    assert derived_advertise_url(host, port) == url


@pytest.mark.parametrize(
    "url",
    ["ftp://gw:8080", "http://user:pw@gw:8080", "http://gw:8080/?x=1", "http://gw:8080#f",
     "http://:8080", "gw:8080", "http://gw:99999", "http://gw:0", "http://g w:80"],
)  # fmt: skip
def test_an_advertise_url_that_is_not_plain_http_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="advertise_url"):
        GatewayConfig(advertise_url=url)


def test_a_plain_advertise_url_is_kept_without_its_trailing_slash() -> None:
    assert GatewayConfig(advertise_url="https://gw-1.example:8443/").advertise_url == (
        "https://gw-1.example:8443"
    )
    assert GatewayConfig().advertise_url is None


def test_the_holder_id_names_the_process_and_carries_the_url() -> None:
    process = process_holder_id()
    holder = holder_with_url(process, "http://gw-2:8080")
    assert holder.startswith(process + "@")
    assert url_of_holder(holder) == "http://gw-2:8080"
    assert url_of_holder(process) is None  # an id without a URL (an older replica)
    assert url_of_holder(process + "@file:///etc/passwd") is None


async def test_the_locator_says_here_the_holders_url_or_no_holder() -> None:
    leases = MemoryLeaseStore()
    own = holder_with_url("here:1:aa", "http://10.0.0.1:8080")
    other = holder_with_url("there:2:bb", "http://10.0.0.2:8080")
    runs_metering = False
    # A process without the metering role never reads the embedded store itself.
    api_only = UsageReadLocator(leases, own, True, lambda: False, False)
    locator = UsageReadLocator(leases, own, True, lambda: runs_metering, True)
    assert await api_only.locate() == UsageReadPlace(here=False, holder_url=None)
    assert (await locator.locate()).here  # no holder: it may be this process soon
    assert await leases.acquire(METERING_LEASE, other, 15)
    there = "http://10.0.0.2:8080"
    assert await api_only.locate() == UsageReadPlace(False, there, here_if_unanswered=False)
    assert await locator.locate() == UsageReadPlace(False, there, here_if_unanswered=True)
    await leases.release(METERING_LEASE, other)
    assert await leases.acquire(METERING_LEASE, own, 15)
    assert (await locator.locate()).here  # won, the writer not yet started
    runs_metering = True
    assert (await locator.locate()).here
    # A ClickHouse server takes every replica's reads: no relay, whoever holds metering.
    server = UsageReadLocator(leases, other, False, lambda: False, False)
    assert (await server.locate()).here

"""Where this system may send its own HTTP requests: one policy for every URL a customer or an
operator hands it (the worker's remote images, the gateway's webhooks and reconciliation alerts).

A URL passes when its scheme is ``https`` (or ``http`` with ``allow_http``) and its host is, or
resolves only to, public addresses (any address with ``allow_private_addresses``). Loopback,
private, link-local (cloud metadata at 169.254.169.254), shared, reserved and unspecified
addresses are not public, nor is an IPv6 address that carries one of them (IPv4-mapped, 6to4,
Teredo, NAT64).

Checking a name and then connecting to it would leave a window: the name can resolve to a public
address for the check and to 127.0.0.1 for the connection (DNS rebinding). So the check is made
where the connection is made: ``guarded_connector`` gives aiohttp a resolver that refuses before
any socket is opened, on the very addresses the connector would use. aiohttp does not ask a
resolver about IP literals, so ``check_literal`` refuses those from the URL itself (a literal
cannot change between a check and a connection).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 ranges that carry an IPv4 address a router may forward to (RFC 6052 NAT64).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class UrlPolicy:
    allow_http: bool = False
    allow_private_addresses: bool = False
    # When set, the only hosts allowed: a name itself, or ".example.com" for its subdomains.
    # Checked on the URL alone, before any DNS lookup.
    allowed_hosts: tuple[str, ...] = ()

    def host_listed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return not self.allowed_hosts or any(
            host.endswith(entry) if entry.startswith(".") else host == entry
            for entry in (e.lower().rstrip(".") for e in self.allowed_hosts)
        )

    @property
    def schemes(self) -> tuple[str, ...]:
        return ("http", "https") if self.allow_http else ("https",)


class UrlRefused(ValueError):
    """A URL the policy does not allow; the message says why (without the URL's secrets)."""


class AddressRefused(OSError):
    """Raised by the guarded resolver. An OSError, so aiohttp reports it as a connection error
    (``ClientConnectorError``); ``refusal_in`` finds it again."""


def is_public(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = [address.ipv4_mapped, address.sixtofour]
        if address.teredo is not None:
            embedded.append(address.teredo[1])  # the client's address
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(v4 is not None and not is_public(v4) for v4 in embedded):
            return False
    return address.is_global and not address.is_multicast


def _address(text: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def check_literal(url: str, policy: UrlPolicy) -> URL:
    """The parsed URL when its scheme and (if it is an IP literal) its host pass; no I/O."""
    try:
        parsed = URL(url)
    except ValueError as exc:  # e.g. a port above 65535
        raise UrlRefused(f"invalid URL: {exc}") from None
    if parsed.scheme not in policy.schemes or not parsed.host:
        raise UrlRefused(f"must be an absolute {' or '.join(policy.schemes)} URL")
    if not policy.host_listed(parsed.host):
        raise UrlRefused(f"host {parsed.host} is not among the allowed hosts")
    address = _address(parsed.host.split("%", 1)[0])
    if address is not None and not policy.allow_private_addresses and not is_public(address):
        raise UrlRefused(f"{parsed.host} resolves to a non-public address ({address})")
    return parsed


class PublicAddressResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, and refuses a name when any of its addresses
    is not public (a name with one private answer among public ones is refused too, so the
    order in which a connector tries them cannot matter)."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = _address(result["host"].split("%", 1)[0])
            if address is None or not is_public(address):
                raise AddressRefused(
                    f"{host} resolves to a non-public address ({address or result['host']})"
                )
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_connector(
    policy: UrlPolicy, resolver: AbstractResolver | None = None
) -> aiohttp.TCPConnector:
    """A connector that never opens a socket to a non-public address unless the policy allows
    private addresses. No DNS cache: every connection resolves (and is checked) afresh."""
    if policy.allow_private_addresses:
        return aiohttp.TCPConnector(resolver=resolver)
    return aiohttp.TCPConnector(resolver=PublicAddressResolver(resolver), use_dns_cache=False)


def refusal_in(error: BaseException) -> AddressRefused | None:
    """The guarded resolver's refusal inside an aiohttp connection error, if that is what it is."""
    if isinstance(error, aiohttp.ClientConnectorError) and isinstance(
        error.os_error, AddressRefused
    ):
        return error.os_error
    return error if isinstance(error, AddressRefused) else None


async def check_url(
    url: str,
    policy: UrlPolicy,
    resolver: AbstractResolver | None = None,
    timeout_seconds: float = 5.0,
) -> URL:
    """``check_literal``, then the host's current addresses (what a submit checks, to refuse
    at once what delivery would refuse anyway). Raises UrlRefused."""
    parsed = check_literal(url, policy)
    host = parsed.host
    assert host is not None  # check_literal refused a URL without one
    if policy.allow_private_addresses or _address(host.split("%", 1)[0]) is not None:
        return parsed
    guard = PublicAddressResolver(resolver)
    try:
        async with asyncio.timeout(timeout_seconds):
            await guard.resolve(host, parsed.port or 0, socket.AF_UNSPEC)
    except AddressRefused as exc:
        raise UrlRefused(str(exc)) from None
    except (OSError, TimeoutError) as exc:
        raise UrlRefused(f"cannot resolve {host}: {exc or 'timed out'}") from None
    return parsed

"""The one outbound-URL policy (worker remote images, webhooks, alerts): which addresses are
public, and what a URL's form alone refuses. Nothing here resolves a name or opens a socket."""

from __future__ import annotations

import ipaddress

import pytest

from render_gateway.url_policy import UrlPolicy, UrlRefused, check_literal, is_public


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",  # multicast
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/x", "https"),
        ("ftp://hooks.example.com/x", "https"),
        ("https:///x", "https"),
        ("https://hooks.example.com:99999/x", "invalid URL"),
        ("https://127.0.0.1/x", r"127\.0\.0\.1 resolves to a non-public address"),
        ("https://[::ffff:127.0.0.1]/x", "non-public"),
        ("https://[fe80::1%25eth0]/x", "non-public"),
    ],
)
def test_check_literal_refuses(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused, match=reason):
        check_literal(url, UrlPolicy())


def test_check_literal_allows_what_the_policy_allows() -> None:
    assert check_literal("https://hooks.example.com/x", UrlPolicy()).host == "hooks.example.com"
    assert check_literal("https://93.184.215.14/x", UrlPolicy()).host == "93.184.215.14"
    local = UrlPolicy(allow_http=True, allow_private_addresses=True)
    assert check_literal("http://127.0.0.1:8/x", local).port == 8

"""Signed asset URLs and asset references, without a server (the gateway process tests are in
test_assets_e2e.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from render_gateway.application.asset_inputs import NotAnAsset, asset_reference
from render_gateway.application.asset_urls import AssetUrlSigner, UrlCheck

ASSET = "a_0123456789ABCDEFG"
OTHER = "a_0123456789ABCDEFH"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def test_a_signed_url_reads_its_asset_until_it_expires() -> None:
    clock = Clock(1_000_000.0)
    signer = AssetUrlSigner(b"k" * 32, ttl_seconds=3600, clock=clock)
    signed = signer.sign(ASSET)
    assert signed.url.startswith(f"/assets/{ASSET}?expires=")
    query = query_of(signed.url)
    assert signer.check(ASSET, query) is UrlCheck.valid
    assert signer.check(OTHER, query) is UrlCheck.invalid
    assert signer.check(ASSET, {**query, "expires": str(signed.expires + 1)}) is UrlCheck.invalid
    assert AssetUrlSigner(b"x" * 32, 3600, clock).check(ASSET, query) is UrlCheck.invalid
    clock.now = signed.expires
    assert signer.check(ASSET, query) is UrlCheck.expired


def test_urls_are_stable_within_a_step_so_caches_hit() -> None:
    clock = Clock(7201.0)
    signer = AssetUrlSigner(b"k" * 32, ttl_seconds=7 * 24 * 3600, clock=clock)
    first = signer.url(ASSET)
    clock.now += 1800
    assert signer.url(ASSET) == first
    clock.now += 3600
    assert signer.url(ASSET) != first
    assert signer.sign(ASSET, 60).expires - clock.now <= 66  # short: a tenth of it at most


@pytest.mark.parametrize(
    "query",
    [{}, {"expires": "x", "signature": "s"}, {"expires": "9" * 40, "signature": "s"},
     {"expires": "10", "signature": "é"}],
)  # fmt: skip
def test_malformed_signatures_are_invalid(query: dict[str, str]) -> None:
    assert AssetUrlSigner(b"k" * 32, 60).check(ASSET, query) is UrlCheck.invalid


def test_the_key_file_is_created_0600_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    path = tmp_path / "asset_url_secret"
    created = AssetUrlSigner.load_or_create(path, 60)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert AssetUrlSigner.load_or_create(path, 60).key == created.key
    assert "key" not in repr(created) or created.key.hex() not in repr(created)
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        AssetUrlSigner.load_or_create(path, 60)


HOSTS = {"gw.example:8080"}


@pytest.mark.parametrize(
    ("value", "asset_id", "signed"),
    [
        (f"/assets/{ASSET}", ASSET, False),
        (f"/assets/{ASSET}?expires=1&signature=x", ASSET, True),
        (f"http://gw.example:8080/assets/{ASSET}", ASSET, False),
        (f"HTTPS://GW.example:8080/assets/{ASSET}?expires=1&signature=x", ASSET, True),
    ],
)
def test_asset_urls_of_this_gateway_are_recognised(value: str, asset_id: str, signed: bool) -> None:
    reference = asset_reference(value, HOSTS)
    assert reference is not None and reference.asset_id == asset_id
    assert reference.path == f"/assets/{asset_id}" and bool(reference.query) == signed


@pytest.mark.parametrize(
    "value",
    ["data:image/png;base64,AAAA", f"https://elsewhere.example/assets/{ASSET}",
     "https://gw.example:8080/jobs/x", "a picture"],
)  # fmt: skip
def test_other_values_are_left_alone(value: str) -> None:
    assert asset_reference(value, HOSTS) is None


@pytest.mark.parametrize("value", ["/assets/../jobs", "/assets/a_short", "/assets/"])
def test_a_gateway_asset_url_naming_no_asset_is_refused(value: str) -> None:
    with pytest.raises(NotAnAsset):
        asset_reference(value, HOSTS)

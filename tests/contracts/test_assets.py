"""The AssetStore contract, run against every implementation: a local directory and S3.

No real S3 runs on this machine; moto's S3 server on 127.0.0.1 stands in for it (a real
process over HTTP, so obstore's S3 client is exercised as against AWS). The tests use only the
Protocol's operations; each backend supplies the two things a store must not do itself:
tamper with stored bytes, and count the byte objects it holds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pytest

from render_gateway.core.ids import new_asset_id
from render_gateway.stores.assets import (
    ASSET_ID,
    Asset,
    AssetExists,
    AssetNotFound,
    AssetStore,
    CorruptAsset,
)
from render_gateway.stores.object_assets import open_asset_store

from support.moto import BUCKET, REGION, S3_CREDENTIALS, Moto


@dataclass
class Backend:
    url: str
    # Replaces the stored bytes of an asset behind the store's back, as tampering at rest would.
    tamper: Callable[[Asset, bytes], None]
    # How many byte objects (not records) the backend holds.
    count_blobs: Callable[[], int]
    options: dict[str, str | bool] = field(default_factory=dict)

    def open(self) -> AssetStore:
        return open_asset_store(self.url, **self.options)


def _blob_key(digest: str) -> str:
    return f"{digest[:2]}/{digest[2:4]}/{digest}"  # the layout of earlier versions' directory


def _local_backend(tmp_path: Path) -> Backend:
    root = tmp_path / "assets"

    def tamper(asset: Asset, data: bytes) -> None:
        (root / _blob_key(asset.blake3)).write_bytes(data)

    def count_blobs() -> int:
        return sum(
            1
            for p in root.rglob("*")
            if p.is_file() and "records" not in p.parts and not p.name.startswith("records.sqlite")
        )

    return Backend(url=root.as_uri(), tamper=tamper, count_blobs=count_blobs)


def _s3_backend(server: Moto) -> Backend:
    prefix = f"assets-{uuid.uuid4().hex}"  # one bucket, a fresh prefix per test

    def tamper(asset: Asset, data: bytes) -> None:
        # A plain PUT, not create-only: exactly what the store under test never does.
        server.client.put_object(
            Bucket=BUCKET, Key=f"{prefix}/{_blob_key(asset.blake3)}", Body=data
        )

    def count_blobs() -> int:
        listed = server.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
        keys = [item["Key"] for item in listed.get("Contents", [])]
        return sum(1 for key in keys if not key.startswith(f"{prefix}/records/"))

    options: dict[str, str | bool] = {
        "endpoint": server.endpoint,
        "region": REGION,
        "allow_http": True,
        **S3_CREDENTIALS,
    }
    return Backend(f"s3://{BUCKET}/{prefix}", tamper, count_blobs, options)


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        return _local_backend(tmp_path)
    return _s3_backend(request.getfixturevalue("moto"))


@pytest.fixture
def store(backend: Backend) -> AssetStore:
    return backend.open()


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG fake", b"", bytes(range(256)) * 4096],
    ids=["small", "empty", "1MiB"],
)
async def test_put_get_round_trip_keeps_owner_type_and_hash(store: AssetStore, data: bytes) -> None:
    asset = await store.put(data, "image/png", "alice")
    assert ASSET_ID.fullmatch(asset.id)
    assert (asset.owner, asset.content_type, asset.size) == ("alice", "image/png", len(data))
    assert asset.blake3 == blake3.blake3(data).hexdigest()
    assert await store.get(asset.id) == (asset, data)
    assert await store.describe(asset.id) == asset


async def test_another_store_on_the_same_url_reads_what_one_wrote(backend: Backend) -> None:
    """What one process (or replica) stores, another opened on the same URL serves."""
    asset = await backend.open().put(b"shared", "video/mp4", "bob")
    fetched, data = await backend.open().get(asset.id)
    assert data == b"shared" and fetched == asset
    assert fetched.owner == "bob" and fetched.content_type == "video/mp4"


async def test_unknown_id(store: AssetStore) -> None:
    with pytest.raises(AssetNotFound):
        await store.get("a_" + "A" * 17)
    with pytest.raises(AssetNotFound):
        await store.describe("a_" + "A" * 17)
    with pytest.raises(AssetNotFound):  # a legacy (content-addressed) id nobody stored
        await store.get("a_" + "0" * 64)


@pytest.mark.parametrize(
    "bad_id",
    [
        "a_../../etc/passwd",
        "a_" + "0" * 63,
        "b_" + "0" * 64,
        "a_" + "G" * 64,
        "",
        "a_" + "0" * 64 + "/x",
        "a_../records/xx",
        "a_AAAAAAAAAAAAAAAA/",
        "a_AAAAAAAAAAAAAAAAA\n",
    ],
)
async def test_malformed_ids_are_not_found(store: AssetStore, bad_id: str) -> None:
    with pytest.raises(AssetNotFound):
        await store.get(bad_id)
    with pytest.raises(AssetNotFound):
        await store.describe(bad_id)


async def test_tampered_bytes_are_refused_on_read(store: AssetStore, backend: Backend) -> None:
    asset = await store.put(b"original bytes", "image/png", "alice")
    backend.tamper(asset, b"Original bytes")
    with pytest.raises(CorruptAsset, match=asset.id):
        await store.get(asset.id)
    assert await store.describe(asset.id) == asset  # the record alone is still intact


async def test_a_put_over_tampered_bytes_is_refused(store: AssetStore, backend: Backend) -> None:
    """Equal outputs share the bytes, so a new asset of these bytes would be unreadable too:
    the put says so instead of handing out such an id."""
    asset = await store.put(b"original bytes", "image/png", "alice")
    backend.tamper(asset, b"Original bytes")
    with pytest.raises(CorruptAsset, match=asset.blake3):
        await store.put(b"original bytes", "image/png", "bob")


async def test_equal_bytes_are_stored_once_under_random_ids(
    store: AssetStore, backend: Backend
) -> None:
    """Item 12: the same bytes (same prompt and seed) must not give everyone the same id."""
    results = await asyncio.gather(
        *(store.put(b"same", "image/png", f"customer-{i % 2}") for i in range(20))
    )
    assert len({a.id for a in results}) == 20
    assert all(blake3.blake3(b"same").hexdigest() not in a.id for a in results)
    assert {a.owner for a in results} == {"customer-0", "customer-1"}
    assert backend.count_blobs() == 1
    for asset in results:
        fetched, data = await store.get(asset.id)
        assert data == b"same" and fetched.owner == asset.owner


async def test_a_chosen_id_is_written_once(store: AssetStore) -> None:
    """An upload's id is drawn when its URL is signed and written by its PUT: the first write
    wins, every later one (the same bytes, or others, even at once) is AssetExists."""
    chosen = new_asset_id()
    first = await store.put(b"upload", "image/png", "alice", asset_id=chosen)
    assert first.id == chosen and await store.get(chosen) == (first, b"upload")
    for data in (b"upload", b"other"):
        with pytest.raises(AssetExists):
            await store.put(data, "image/png", "alice", asset_id=chosen)
    racing = new_asset_id()
    results = await asyncio.gather(
        *(store.put(b"race", "image/png", "bob", asset_id=racing) for _ in range(8)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Asset) for r in results) == 1
    assert all(isinstance(r, Asset | AssetExists) for r in results)
    assert await store.describe(chosen) == first
    with pytest.raises(ValueError):
        await store.put(b"x", "image/png", "alice", asset_id="a_../records/xx")

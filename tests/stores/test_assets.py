"""The local asset store on a real directory: random owned ids, shared verified bytes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import blake3
import orjson
import pytest

from render_gateway.stores.assets import (
    ASSET_ID,
    AssetNotFound,
    CorruptAsset,
    LocalAssetStore,
)


async def test_put_get_round_trip_with_owner_and_hash(tmp_path: Path) -> None:
    store = LocalAssetStore(tmp_path)
    asset = await store.put(b"\x89PNG fake", "image/png", "alice")
    assert ASSET_ID.fullmatch(asset.id) and asset.owner == "alice"
    assert asset.blake3 == blake3.blake3(b"\x89PNG fake").hexdigest()
    fetched, data = await store.get(asset.id)
    assert data == b"\x89PNG fake" and fetched == asset
    assert await store.describe(asset.id) == asset


async def test_ids_are_random_not_the_hash_of_the_bytes(tmp_path: Path) -> None:
    """Item 12: the same bytes (same prompt and seed) must not give everyone the same id."""
    store = LocalAssetStore(tmp_path)
    results = await asyncio.gather(
        *(store.put(b"same", "image/png", f"customer-{i % 2}") for i in range(20))
    )
    ids = {a.id for a in results}
    assert len(ids) == 20
    assert all(blake3.blake3(b"same").hexdigest() not in a.id for a in results)
    assert {a.owner for a in results} == {"customer-0", "customer-1"}
    blobs = [p for p in tmp_path.rglob("*") if p.is_file() and "records" not in p.parts]
    assert len(blobs) == 1  # the bytes are stored once; no temp files left
    records = list((tmp_path / "records").rglob("*.json"))
    assert len(records) == 20


async def test_tampered_bytes_are_refused(tmp_path: Path) -> None:
    store = LocalAssetStore(tmp_path)
    asset = await store.put(b"original bytes", "image/png", "alice")
    path = next(p for p in tmp_path.rglob("*") if p.is_file() and "records" not in p.parts)
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptAsset):
        await store.get(asset.id)


async def test_an_asset_of_an_earlier_version_is_read_without_an_owner(tmp_path: Path) -> None:
    """Assets stored before ids were random keep their content-addressed id; nobody owns them
    (the gateway lets only admins read them with credentials)."""
    data = b"written by an earlier version"
    digest = blake3.blake3(data).hexdigest()
    blob = tmp_path / digest[:2] / digest[2:4] / digest
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    blob.with_suffix(".json").write_bytes(
        orjson.dumps({"content_type": "image/png", "size": len(data)})
    )
    asset, read = await LocalAssetStore(tmp_path).get("a_" + digest)
    assert read == data and asset.owner is None and asset.blake3 == digest


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
    ],
)
async def test_malformed_or_unknown_ids(tmp_path: Path, bad_id: str) -> None:
    store = LocalAssetStore(tmp_path)
    with pytest.raises(AssetNotFound):
        await store.get(bad_id)


async def test_unknown_id(tmp_path: Path) -> None:
    with pytest.raises(AssetNotFound):
        await LocalAssetStore(tmp_path).get("a_" + "A" * 17)

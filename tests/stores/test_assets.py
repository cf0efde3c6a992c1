"""The local content-addressed asset store on a real directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import blake3
import pytest

from render_gateway.stores.assets import (
    AssetNotFound,
    CorruptAsset,
    LocalAssetStore,
    asset_id_for,
)


async def test_put_get_round_trip_and_content_addressing(tmp_path: Path) -> None:
    store = LocalAssetStore(tmp_path)
    asset = await store.put(b"\x89PNG fake", "image/png")
    assert asset.id == "a_" + blake3.blake3(b"\x89PNG fake").hexdigest()
    fetched, data = await store.get(asset.id)
    assert data == b"\x89PNG fake" and fetched == asset


async def test_same_bytes_are_stored_once_and_never_overwritten(tmp_path: Path) -> None:
    store = LocalAssetStore(tmp_path)
    results = await asyncio.gather(*(store.put(b"same", "image/png") for _ in range(20)))
    assert len({a.id for a in results}) == 1
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2  # the bytes and their content type; no temp files left
    again = await store.put(b"same", "video/mp4")  # a different claim about the same bytes
    assert (await store.get(again.id))[0].content_type == "image/png"


async def test_tampered_bytes_are_refused(tmp_path: Path) -> None:
    store = LocalAssetStore(tmp_path)
    asset = await store.put(b"original bytes", "image/png")
    path = next(p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".json")
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptAsset):
        await store.get(asset.id)


@pytest.mark.parametrize(
    "bad_id",
    [
        "a_../../etc/passwd",
        "a_" + "0" * 63,
        "b_" + "0" * 64,
        "a_" + "G" * 64,
        "",
        "a_" + "0" * 64 + "/x",
    ],
)
async def test_malformed_or_unknown_ids(tmp_path: Path, bad_id: str) -> None:
    store = LocalAssetStore(tmp_path)
    with pytest.raises(AssetNotFound):
        await store.get(bad_id)


async def test_unknown_id(tmp_path: Path) -> None:
    with pytest.raises(AssetNotFound):
        await LocalAssetStore(tmp_path).get(asset_id_for(b"never stored"))

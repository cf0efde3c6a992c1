"""Output bytes, stored by their BLAKE3 hash: create-only writes, verified reads.

An asset's id is ``a_`` + the hex BLAKE3 of its bytes: content-addressed (equal outputs are
stored once, an id can never point at other bytes) and unguessable without the bytes (256
bits). The embedded implementation is a local directory; issue 5 moves the CAS behind obstore
(S3/R2/GCS) with the same protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import blake3
import orjson

ASSET_ID = re.compile(r"^a_[0-9a-f]{64}$")


class AssetNotFound(KeyError):
    pass


class CorruptAsset(RuntimeError):
    """The stored bytes no longer hash to their id: they were changed on disk."""


@dataclass(frozen=True)
class Asset:
    id: str
    content_type: str
    size: int


def asset_id_for(data: bytes) -> str:
    return "a_" + blake3.blake3(data).hexdigest()


class AssetStore(Protocol):
    async def put(self, data: bytes, content_type: str) -> Asset: ...

    async def get(self, asset_id: str) -> tuple[Asset, bytes]: ...


class LocalAssetStore:
    """``file:///path``: one file per asset under a two-level fan-out, plus its content type."""

    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, asset_id: str) -> Path:
        if not ASSET_ID.fullmatch(asset_id):
            raise AssetNotFound(asset_id)
        digest = asset_id[2:]
        return self._root / digest[:2] / digest[2:4] / digest

    async def put(self, data: bytes, content_type: str) -> Asset:
        asset = Asset(asset_id_for(data), content_type, len(data))
        await asyncio.to_thread(self._write, asset, data)
        return asset

    def _write(self, asset: Asset, data: bytes) -> None:
        path = self._path(asset.id)
        if path.exists():
            return  # create-only: the same id means the same bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = orjson.dumps({"content_type": asset.content_type, "size": asset.size})
        for target, payload in ((path.with_suffix(".json"), meta), (path, data)):
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.link(temp, target)  # fails if it exists: never overwrite
            except FileExistsError:
                pass
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)

    async def get(self, asset_id: str) -> tuple[Asset, bytes]:
        return await asyncio.to_thread(self._read, asset_id)

    def _read(self, asset_id: str) -> tuple[Asset, bytes]:
        path = self._path(asset_id)
        try:
            data = path.read_bytes()
            meta = orjson.loads(path.with_suffix(".json").read_bytes())
        except FileNotFoundError:
            raise AssetNotFound(asset_id) from None
        if asset_id_for(data) != asset_id:
            raise CorruptAsset(f"asset {asset_id} does not match its bytes")
        return Asset(asset_id, str(meta["content_type"]), len(data)), data

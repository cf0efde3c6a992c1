"""Output bytes under random, owned ids: create-only writes, verified reads.

An asset's id is ``a_`` + 17 random base62 characters (≈ 101 bits, ``ids.new_asset_id``): it
says nothing about the bytes, so the same prompt and seed give every customer a different id,
and nobody can compute one. Each asset has a record (owner, content type, size, BLAKE3 of the
bytes); the bytes themselves are stored once per BLAKE3 hash (content-addressed, so equal
outputs share storage) and re-hashed on every read. The hash is the ``ETag`` and the integrity
check, never the id.

Assets written before ids were random (``a_`` + the 64 hex digits of their BLAKE3) are still
read, with no owner: only admins may read them (see docs/OPERATIONS.md, "Assets").

The embedded implementation is a local directory; issue 5 moves the CAS behind obstore
(S3/R2/GCS) with the same protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import blake3
import orjson

from render_gateway.core.ids import new_asset_id

ASSET_ID = re.compile(r"^a_[0-9A-Za-z]{17}$")
LEGACY_ASSET_ID = re.compile(r"^a_[0-9a-f]{64}$")  # content-addressed ids of earlier versions


class AssetNotFound(KeyError):
    pass


class CorruptAsset(RuntimeError):
    """The stored bytes no longer hash to their record's BLAKE3: they were changed on disk."""


@dataclass(frozen=True)
class Asset:
    id: str
    content_type: str
    size: int
    owner: str | None  # the customer id; None for a legacy asset (admins only)
    blake3: str  # hex digest of the bytes: the ETag and the integrity check


def is_asset_id(value: str) -> bool:
    return ASSET_ID.fullmatch(value) is not None or LEGACY_ASSET_ID.fullmatch(value) is not None


class AssetStore(Protocol):
    async def put(self, data: bytes, content_type: str, owner: str) -> Asset: ...

    async def get(self, asset_id: str) -> tuple[Asset, bytes]: ...

    async def describe(self, asset_id: str) -> Asset:
        """The record alone (owner, type, size), without reading the bytes."""
        ...


class LocalAssetStore:
    """``file:///path``: bytes under a two-level fan-out by BLAKE3 hex (the layout of earlier
    versions, so their assets stay where they were), records under ``records/``."""

    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def _blob_path(self, digest: str) -> Path:
        return self._root / digest[:2] / digest[2:4] / digest

    def _record_path(self, asset_id: str) -> Path:
        return self._root / "records" / asset_id[2:4] / f"{asset_id}.json"

    async def put(self, data: bytes, content_type: str, owner: str) -> Asset:
        return await asyncio.to_thread(self._write, data, content_type, owner)

    def _write(self, data: bytes, content_type: str, owner: str) -> Asset:
        digest = blake3.blake3(data).hexdigest()
        blob = self._blob_path(digest)
        if not blob.exists():  # create-only: the same hash means the same bytes
            _create_only(blob, data)
        while True:
            asset = Asset(new_asset_id(), content_type, len(data), owner, digest)
            record = orjson.dumps(
                {"owner": owner, "content_type": content_type, "size": len(data),
                 "blake3": digest, "created_at": time.time()}
            )  # fmt: skip
            if _create_only(self._record_path(asset.id), record):
                return asset
            # An id drawn twice (about 2^-100): draw again rather than overwrite.

    async def get(self, asset_id: str) -> tuple[Asset, bytes]:
        return await asyncio.to_thread(self._read, asset_id)

    async def describe(self, asset_id: str) -> Asset:
        return await asyncio.to_thread(self._describe, asset_id)

    def _describe(self, asset_id: str) -> Asset:
        try:
            if ASSET_ID.fullmatch(asset_id):
                meta = orjson.loads(self._record_path(asset_id).read_bytes())
                return Asset(
                    asset_id, str(meta["content_type"]), int(meta["size"]), str(meta["owner"]),
                    str(meta["blake3"]),
                )  # fmt: skip
            if LEGACY_ASSET_ID.fullmatch(asset_id):
                digest = asset_id[2:]
                meta = orjson.loads(self._blob_path(digest).with_suffix(".json").read_bytes())
                return Asset(asset_id, str(meta["content_type"]), int(meta["size"]), None, digest)
        except FileNotFoundError:
            pass
        raise AssetNotFound(asset_id)

    def _read(self, asset_id: str) -> tuple[Asset, bytes]:
        asset = self._describe(asset_id)
        try:
            data = self._blob_path(asset.blake3).read_bytes()
        except FileNotFoundError:
            raise CorruptAsset(f"asset {asset_id} has a record but no bytes") from None
        if blake3.blake3(data).hexdigest() != asset.blake3:
            raise CorruptAsset(f"asset {asset_id} does not match its bytes")
        return asset, data


def _create_only(target: Path, payload: bytes) -> bool:
    """Write ``payload`` to ``target`` durably, unless ``target`` exists (then False)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temp, target)  # fails if it exists: never overwrite
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return True

"""Output bytes under random, owned ids: create-only writes, verified reads.

An asset's id is ``a_`` + 17 random base62 characters (≈ 101 bits, ``ids.new_asset_id``): it
says nothing about the bytes, so the same prompt and seed give every customer a different id,
and nobody can compute one. Each asset has a record (owner, content type, size, BLAKE3 of the
bytes); the bytes themselves are stored once per BLAKE3 hash (content-addressed, so equal
outputs share storage) and re-hashed on every read. The hash is the ``ETag`` and the integrity
check, never the id.

Assets written before ids were random (``a_`` + the 64 hex digits of their BLAKE3) are still
read, with no owner: only admins may read them (see docs/OPERATIONS.md, "Assets").

The implementation is ``ObjectAssetStore`` (object_assets.py) on an object store chosen by
``gateway.stores.assets``: a local directory (``file://``, the default ``<data_dir>/assets``) or
a bucket (``s3://``); ``open_asset_store`` opens it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

ASSET_ID = re.compile(r"^a_[0-9A-Za-z]{17}$")
LEGACY_ASSET_ID = re.compile(r"^a_[0-9a-f]{64}$")  # content-addressed ids of earlier versions


class AssetNotFound(KeyError):
    """No asset has this id (or it is not an asset id at all)."""


class AssetExists(RuntimeError):
    """An asset already has the id a write asked for (an upload URL used twice)."""


class CorruptAsset(RuntimeError):
    """The stored bytes no longer hash to their record's BLAKE3 (they were changed at rest), or
    they are missing, or the record itself cannot be read."""


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
    async def put(
        self, data: bytes, content_type: str, owner: str, asset_id: str | None = None
    ) -> Asset:
        """Store ``data`` under a new random id owned by ``owner``, or under ``asset_id`` (one
        drawn earlier with ``ids.new_asset_id``: an upload's). Create-only: nothing is ever
        overwritten, and :class:`AssetExists` if ``asset_id`` is taken, so a given id is
        written once. :class:`CorruptAsset` if a stored copy of these bytes was altered."""
        ...

    async def get(self, asset_id: str) -> tuple[Asset, bytes]:
        """The record and the bytes, re-hashed: :class:`AssetNotFound` for an unknown or
        malformed id, :class:`CorruptAsset` if the bytes do not match the record."""
        ...

    async def describe(self, asset_id: str) -> Asset:
        """The record alone (owner, type, size), without reading the bytes."""
        ...

    async def close(self) -> None:
        """Finish pending writes and release the store's threads and files."""
        ...

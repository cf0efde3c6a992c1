"""The asset store on an :class:`ObjectStore`: ``file:///abs/dir`` or ``s3://bucket/prefix``.

Blob keys are those of the directory earlier versions wrote, so an existing
``<data_dir>/assets`` opened as ``file://<data_dir>/assets`` reads as before:

* ``ab/cd/abcd…`` — the bytes, under their BLAKE3 hex (two levels of fan-out);
* one record per asset (owner, type, size, hash) by id, in ``records.sqlite`` on a ``file://``
  store (group-committed) or as ``records/XY/a_?XY….json`` objects on ``s3://`` (and read from
  there on a directory earlier versions wrote): see ``asset_records.py``;
* ``ab/cd/abcd….json`` — the record of a legacy asset (id ``a_`` + the hex), no owner.

Every write is create-only (the object store never overwrites), and every read re-hashes the
bytes. Object store calls block, so each operation runs in a thread.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import blake3

from render_gateway.core.ids import new_asset_id
from render_gateway.stores.asset_records import (
    AssetRecords,
    ObjectAssetRecords,
    SqliteAssetRecords,
    UnreadableRecord,
    decoded_record,
)
from render_gateway.stores.assets import (
    ASSET_ID,
    LEGACY_ASSET_ID,
    Asset,
    AssetExists,
    AssetNotFound,
    AssetStore,
    CorruptAsset,
)
from render_gateway.stores.local_objects import LocalDirectoryObjects
from render_gateway.stores.objects import (
    ObjectExists,
    ObjectMissing,
    ObjectStore,
    open_object_store,
)
from render_gateway.stores.urls import parse_store_url

SETTING = "gateway.stores.assets"
_DIGEST = re.compile(r"[0-9a-f]{64}")


def open_asset_store(url: str, **options: str | bool) -> AssetStore:
    """The asset store at ``url`` (``file:///abs/dir``, created if absent, or
    ``s3://bucket/prefix``). ``options`` go to the S3 client as for ``audit.cas_url``
    (``endpoint``, ``region``, credentials; by default obstore reads ``AWS_*``)."""
    parsed = parse_store_url("assets", url, ("file", "s3"))
    if parsed.scheme == "file":  # durable on return, and cheaper than obstore's LocalStore
        if options:
            raise ValueError(f"{SETTING}: file:// URLs take no options, got {sorted(options)}")
        objects = LocalDirectoryObjects(parsed.sqlite_path(), url)
        return ObjectAssetStore(
            objects, SqliteAssetRecords(objects.root, ObjectAssetRecords(objects))
        )
    bucket = open_object_store(url, setting_name=SETTING, create=True, **options)
    return ObjectAssetStore(bucket, ObjectAssetRecords(bucket))


def blob_key(digest: str) -> str:
    return f"{digest[:2]}/{digest[2:4]}/{digest}"


def legacy_record_key(digest: str) -> str:
    return f"{blob_key(digest)}.json"


class ObjectAssetStore:
    """:class:`AssetStore` over ``objects``; the bytes of equal outputs are stored once."""

    def __init__(self, objects: ObjectStore, records: AssetRecords) -> None:
        self.objects, self.records = objects, records

    async def put(
        self, data: bytes, content_type: str, owner: str, asset_id: str | None = None
    ) -> Asset:
        if asset_id is not None and not ASSET_ID.fullmatch(asset_id):
            raise ValueError(f"{asset_id!r} is not an asset id")  # never becomes a key
        # The bytes are durable before any record names them.
        digest = await asyncio.to_thread(self._put_bytes, data)
        while True:
            asset = Asset(asset_id or new_asset_id(), content_type, len(data), owner, digest)
            record = {"owner": owner, "content_type": content_type, "size": len(data),
                      "blake3": digest, "created_at": time.time()}  # fmt: skip
            if await self.records.add(asset.id, record):
                return asset
            if asset_id is not None:
                raise AssetExists(asset_id)  # the id was asked for: its one write is spent
            # an id drawn twice (about 2^-100): draw again, never overwrite

    async def close(self) -> None:
        await self.records.close()

    async def get(self, asset_id: str) -> tuple[Asset, bytes]:
        return await asyncio.to_thread(self._get, asset_id)

    async def describe(self, asset_id: str) -> Asset:
        return await asyncio.to_thread(self._describe, asset_id)

    def _put_bytes(self, data: bytes) -> str:
        digest = blake3.blake3(data).hexdigest()
        try:
            # False when the same bytes are already stored: the key is their hash.
            self.objects.put_new(blob_key(digest), data)
        except ObjectExists:
            # Different bytes under our hash: the stored copy was altered. Refuse rather than
            # hand out an id whose every read would fail.
            raise CorruptAsset(
                f"the stored bytes of BLAKE3 {digest} in {self.objects.url} do not hash to it"
            ) from None
        return digest

    def _describe(self, asset_id: str) -> Asset:
        # Only well-formed ids become keys: nothing a caller sends can name another object.
        if ASSET_ID.fullmatch(asset_id):
            return _asset(asset_id, self._found(asset_id, self.records.find))
        if LEGACY_ASSET_ID.fullmatch(asset_id):
            digest = asset_id[2:]
            meta = self._found(asset_id, lambda _id: self._legacy_record(digest))
            return _asset(asset_id, {**meta, "owner": None, "blake3": digest})
        raise AssetNotFound(asset_id)

    @staticmethod
    def _found(asset_id: str, find: Callable[[str], dict[str, Any] | None]) -> dict[str, Any]:
        """The record ``find`` reads, with a missing or unreadable one said as the store says
        it (one translation for both layouts)."""
        try:
            meta = find(asset_id)
        except UnreadableRecord:
            raise CorruptAsset(f"asset {asset_id} has an unreadable record") from None
        if meta is None:
            raise AssetNotFound(asset_id)
        return meta

    def _legacy_record(self, digest: str) -> dict[str, Any] | None:
        try:
            raw = self.objects.get(legacy_record_key(digest))
        except ObjectMissing:
            return None
        return decoded_record(raw)

    def _get(self, asset_id: str) -> tuple[Asset, bytes]:
        asset = self._describe(asset_id)
        try:
            data = self.objects.get(blob_key(asset.blake3))
        except ObjectMissing:
            raise CorruptAsset(f"asset {asset_id} has a record but no bytes") from None
        if blake3.blake3(data).hexdigest() != asset.blake3:
            raise CorruptAsset(f"asset {asset_id} does not match its bytes")
        return asset, data

    def __repr__(self) -> str:
        return f"ObjectAssetStore({self.objects!r})"


def _asset(asset_id: str, meta: dict[str, Any]) -> Asset:
    """The record's fields, checked: a digest that is not 64 hex digits never becomes a key."""
    unreadable = CorruptAsset(f"asset {asset_id} has an unreadable record")
    try:
        owner = meta["owner"]
        asset = Asset(
            asset_id, str(meta["content_type"]), int(meta["size"]),
            None if owner is None else str(owner), str(meta["blake3"]),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError):
        raise unreadable from None
    if not _DIGEST.fullmatch(asset.blake3):
        raise unreadable
    return asset

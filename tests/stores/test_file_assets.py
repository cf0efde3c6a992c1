"""The asset store on a local directory: what only a file:// store has.

The behaviour every implementation shares is in tests/contracts/test_assets.py. Here: an
existing ``<data_dir>/assets`` written by earlier versions opens as ``file://`` and reads as
before, new writes keep that layout, broken records are reported, writes are fsynced, and
store URLs are checked.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import blake3
import orjson
import pytest

from render_gateway.stores import local_objects
from render_gateway.stores.asset_records import RECORDS_FILE, SqliteAssetRecords
from render_gateway.stores.assets import AssetExists, AssetNotFound, CorruptAsset
from render_gateway.stores.local_objects import LocalDirectoryObjects
from render_gateway.stores.object_assets import open_asset_store
from render_gateway.stores.urls import StoreUrlError

OWNED_ID = "a_" + "Xy" + "0" * 15  # a well-formed random id, fanned out under records/Xy/


def _blob_path(root: Path, digest: str) -> Path:
    return root / digest[:2] / digest[2:4] / digest


def _write_like_an_earlier_version(root: Path) -> tuple[bytes, str, bytes, str]:
    """A directory as the removed LocalAssetStore (and, before it, content-addressed ids) left
    it: one owned asset, one legacy asset, and a temp file a crashed write left behind."""
    owned, legacy = b"an owned output", b"written by an earlier version"
    owned_digest, legacy_digest = (blake3.blake3(d).hexdigest() for d in (owned, legacy))
    for data, digest in ((owned, owned_digest), (legacy, legacy_digest)):
        _blob_path(root, digest).parent.mkdir(parents=True, exist_ok=True)
        _blob_path(root, digest).write_bytes(data)
    record = root / "records" / OWNED_ID[2:4] / f"{OWNED_ID}.json"
    record.parent.mkdir(parents=True)
    fields = {"owner": "alice", "content_type": "image/webp", "size": len(owned),
              "blake3": owned_digest, "created_at": 1.0}  # fmt: skip
    record.write_bytes(orjson.dumps(fields))
    _blob_path(root, legacy_digest).with_suffix(".json").write_bytes(
        orjson.dumps({"content_type": "image/png", "size": len(legacy)})
    )
    (record.parent / ".tmp-abc123").write_bytes(b"half a record")
    return owned, owned_digest, legacy, legacy_digest


async def test_an_existing_assets_directory_reads_as_before(tmp_path: Path) -> None:
    root = tmp_path / "assets"
    owned, owned_digest, legacy, legacy_digest = _write_like_an_earlier_version(root)
    store = open_asset_store(root.as_uri())

    asset, data = await store.get(OWNED_ID)
    assert data == owned
    assert (asset.owner, asset.content_type, asset.blake3) == ("alice", "image/webp", owned_digest)

    # Assets stored before ids were random keep their content-addressed id; nobody owns them
    # (the gateway lets only admins read them with credentials).
    asset, data = await store.get("a_" + legacy_digest)
    assert data == legacy and asset.owner is None and asset.blake3 == legacy_digest
    assert asset.content_type == "image/png"

    # Storing bytes already there (from before) shares them: no second copy, no error.
    again = await store.put(owned, "image/webp", "bob")
    assert again.blake3 == owned_digest and (await store.get(again.id))[1] == owned


async def test_new_writes_keep_blobs_under_their_hash_and_records_in_one_file(
    tmp_path: Path,
) -> None:
    """Blobs keep the layout earlier versions wrote; new records are rows of records.sqlite
    (group-committed), one per id, never a file per request."""
    root = tmp_path / "assets"
    store = open_asset_store(root.as_uri())
    asset = await store.put(b"bytes", "image/png", "alice")
    await store.close()
    assert _blob_path(root, asset.blake3).read_bytes() == b"bytes"
    assert not (root / "records").exists()
    with sqlite3.connect(root / RECORDS_FILE) as conn:
        rows = conn.execute("SELECT id, record FROM asset_records").fetchall()
    assert [row[0] for row in rows] == [asset.id]
    record = orjson.loads(rows[0][1])
    assert record["owner"] == "alice" and record["blake3"] == asset.blake3
    assert record["content_type"] == "image/png" and record["size"] == 5
    leftovers = [p.name for p in root.rglob("*") if "#" in p.name or p.name.startswith(".tmp")]
    assert leftovers == []  # obstore's staging files are linked into place and removed


async def test_concurrent_puts_share_commits(tmp_path: Path) -> None:
    """The point of the records file: 64 concurrent writes take far fewer than 64 commits, and
    every one of them is readable (durable) once its put returns, from another process's
    connection too."""
    root = tmp_path / "assets"
    store = open_asset_store(root.as_uri())
    assets = await asyncio.gather(
        *(store.put(f"out {i}".encode(), "image/png", "alice") for i in range(64))
    )
    records = store.records
    assert isinstance(records, SqliteAssetRecords)
    commits = records.commits
    assert 1 <= commits < 32
    reader = open_asset_store(root.as_uri())
    for i, asset in enumerate(assets):
        fetched, data = await reader.get(asset.id)
        assert data == f"out {i}".encode() and fetched == asset
    await asyncio.gather(store.close(), reader.close())


async def test_an_id_taken_in_the_earlier_json_layout_stays_taken(tmp_path: Path) -> None:
    """A chosen id (an upload's) whose record an earlier version wrote as JSON is spent: the
    records file never takes a second write for it."""
    root = tmp_path / "assets"
    _write_like_an_earlier_version(root)
    store = open_asset_store(root.as_uri())
    with pytest.raises(AssetExists):
        await store.put(b"other bytes", "image/png", "mallory", asset_id=OWNED_ID)
    asset, _ = await store.get(OWNED_ID)
    assert asset.owner == "alice"
    await store.close()


async def test_a_put_killed_before_its_commit_leaves_no_record(tmp_path: Path) -> None:
    """kill -9 between the bytes and the record's commit: a real child process is killed while
    its record write is held inside the transaction; afterwards the id has no record (the
    bytes, content-addressed, may stay), and the store opens and writes as before."""
    root = tmp_path / "assets"
    script = f"""
import asyncio, os, sqlite3, sys
from pathlib import Path
from render_gateway.stores.object_assets import open_asset_store

async def main() -> None:
    store = open_asset_store(Path({str(root)!r}).as_uri())
    records = store.records
    writer = records._running_writer()
    await asyncio.wrap_future(writer.ready)
    def stall(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO asset_records VALUES ('a_00000000000000000', x'7b7d')")
        print("inside", flush=True)
        import time; time.sleep(60)
    writer.submit(stall)
    await store.put(b"never recorded", "image/png", "alice", asset_id="a_AAAAAAAAAAAAAAAAA")

asyncio.run(main())
"""
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env={**os.environ}
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"inside"
    child.kill()
    child.wait()
    store = open_asset_store(root.as_uri())
    for asset_id in ("a_00000000000000000", "a_AAAAAAAAAAAAAAAAA"):
        with pytest.raises(AssetNotFound):
            await store.describe(asset_id)
    asset = await store.put(b"after", "image/png", "alice", asset_id="a_AAAAAAAAAAAAAAAAA")
    assert (await store.get(asset.id))[1] == b"after"
    await store.close()


async def test_a_record_without_bytes_is_corrupt(tmp_path: Path) -> None:
    root = tmp_path / "assets"
    store = open_asset_store(root.as_uri())
    asset = await store.put(b"soon gone", "image/png", "alice")
    _blob_path(root, asset.blake3).unlink()
    with pytest.raises(CorruptAsset, match="no bytes"):
        await store.get(asset.id)


@pytest.mark.parametrize(
    "record",
    [
        b"{not json",
        b"[]",
        orjson.dumps({"owner": "alice", "content_type": "image/png"}),
        # A digest that is not 64 hex digits must never become a key (here: outside the root).
        orjson.dumps(
            {"owner": "alice", "content_type": "image/png", "size": 1, "blake3": "../../x"}
        ),
    ],
    ids=["not-json", "not-an-object", "fields-missing", "digest-not-hex"],
)
async def test_an_unreadable_record_is_corrupt(tmp_path: Path, record: bytes) -> None:
    root = tmp_path / "assets"
    path = root / "records" / OWNED_ID[2:4] / f"{OWNED_ID}.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(record)
    store = open_asset_store(root.as_uri())
    with pytest.raises(CorruptAsset, match="unreadable record"):
        await store.describe(OWNED_ID)
    with pytest.raises(CorruptAsset, match="unreadable record"):
        await store.get(OWNED_ID)


def test_every_put_syncs_the_object_and_its_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """obstore's LocalStore does not fsync; the assets' directory store must, or a power loss
    can lose bytes a finished job names: each object is fsynced through its open file, and
    each new directory entry (the object's, and those of directories the put made) through its
    directory. A real fsync is still called: the spy only records the directories."""
    root = tmp_path / "objects"
    synced: list[Path] = []
    real_fsync_path = local_objects.fsync_path

    def recording_fsync_path(path: Path) -> None:
        synced.append(path)
        real_fsync_path(path)

    monkeypatch.setattr(local_objects, "fsync_path", recording_fsync_path)
    objects = LocalDirectoryObjects(root)
    assert objects.put_new("ab/cd/key", b"v") is True  # new directories: synced up to the root
    assert synced == [root, root / "ab", root / "ab/cd"]
    synced.clear()
    assert objects.put_new("ab/cd/other", b"w") is True  # a new entry in an existing directory
    assert synced == [root / "ab/cd"]
    synced.clear()
    assert objects.put_new("ab/cd/key", b"v") is False  # already there, synced by its writer
    assert synced == []
    assert objects.get("ab/cd/key") == b"v" and objects.exists("ab/cd/key")
    assert sorted(objects.list("ab/")) == ["ab/cd/key", "ab/cd/other"]


async def test_a_file_url_creates_its_directory(tmp_path: Path) -> None:
    root = tmp_path / "new" / "assets dir"  # a space: the URL is percent-encoded
    store = open_asset_store(root.as_uri())
    asset = await store.put(b"x", "image/png", "alice")
    assert _blob_path(root, asset.blake3).read_bytes() == b"x"
    with pytest.raises(AssetNotFound):
        await store.get("a_" + "B" * 17)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///tmp/assets.db", r"gateway\.stores\.assets.*file://, s3://"),
        ("gs://bucket/assets", r"gateway\.stores\.assets.*file://, s3://"),
        ("file://data/assets", r"gateway\.stores\.assets.*absolute path"),
        ("/no/scheme", r"gateway\.stores\.assets"),
    ],
)
def test_urls_it_cannot_open_name_the_setting(url: str, message: str) -> None:
    with pytest.raises(StoreUrlError, match=message):
        open_asset_store(url)


def test_an_unknown_s3_option_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"gateway\.stores\.assets.*no_such_option"):
        open_asset_store("s3://bucket/assets", region="us-east-1", no_such_option="1")

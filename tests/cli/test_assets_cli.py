"""``render-gateway assets export-records``: a file:// asset directory moved to S3 reads there.

The real CLI in a subprocess, then the directory uploaded object by object to moto's S3 server
(a real process on 127.0.0.1, standing in for S3, which cannot run here) and read through the
s3:// asset store, as an operator's ``aws s3 sync`` would leave it.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from render_gateway.stores.object_assets import open_asset_store

from support.moto import BUCKET, REGION, S3_CREDENTIALS, Moto, moto

__all__ = ["moto"]  # the fixture


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "render_gateway", "assets", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_exported_records_read_from_a_bucket(tmp_path: Path, moto: Moto) -> None:
    root = tmp_path / "assets"
    local = open_asset_store(root.as_uri())
    assets = [await local.put(f"out {i}".encode(), "image/png", f"c{i}") for i in range(3)]
    await local.close()

    first = _cli("export-records", str(root))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "3 records written, 0 already there"
    again = _cli("export-records", str(root))
    assert again.stdout.strip() == "0 records written, 3 already there"  # create-only

    prefix = f"moved-{uuid.uuid4().hex}"
    for path in root.rglob("*"):  # `aws s3 sync`, skipping what the docs say to skip
        if path.is_file() and not path.name.startswith((".tmp-", "records.sqlite")):
            key = f"{prefix}/{path.relative_to(root).as_posix()}"
            moto.client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    bucket = open_asset_store(
        f"s3://{BUCKET}/{prefix}", endpoint=moto.endpoint, region=REGION, allow_http=True,
        **S3_CREDENTIALS,
    )  # fmt: skip
    for i, asset in enumerate(assets):
        assert await bucket.get(asset.id) == (asset, f"out {i}".encode())


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    result = _cli("export-records", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "is not a directory" in result.stderr and "Traceback" not in result.stderr

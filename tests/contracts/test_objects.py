"""One contract for the object store and the CAS on it, run against a local directory and S3.

No real S3 runs on this machine; moto's S3 server on 127.0.0.1 stands in for it. It is a real
process spoken to over HTTP, so obstore's S3 client (signing, conditional puts, listing) is
exercised exactly as against AWS.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from blake3 import blake3
from botocore.exceptions import ClientError

from render_gateway.audit.cas import ContentStore, IntegrityError
from render_gateway.stores.local_objects import LocalDirectoryObjects
from render_gateway.stores.objects import (
    ObjectExists,
    ObjectMissing,
    ObjectStore,
    default_cas_url,
    open_object_store,
)

from support.moto import BUCKET, REGION, S3_CREDENTIALS, Moto


@dataclass
class Backend:
    url: str
    # Writes bytes under a key behind the store's back, as tampering at rest would.
    overwrite: Callable[[str, bytes], None]
    options: dict[str, str | bool] = field(default_factory=dict)
    directory: Path | None = None  # the plain-POSIX implementation, over this directory

    def open(self) -> ObjectStore:
        if self.directory is not None:
            return LocalDirectoryObjects(self.directory)
        return open_object_store(self.url, **self.options)


def _local_backend(tmp_path: Path) -> Backend:
    root = tmp_path / "objects"

    def overwrite(key: str, data: bytes) -> None:
        (root / key).write_bytes(data)

    return Backend(url=root.as_uri(), overwrite=overwrite)


def _s3_backend(moto: Moto) -> Backend:
    prefix = f"test-{uuid.uuid4().hex}"  # one bucket, a fresh prefix per test

    def overwrite(key: str, data: bytes) -> None:
        # A plain PUT, not create-only: exactly what the store under test refuses to do.
        moto.client.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=data)

    options: dict[str, str | bool] = {
        "endpoint": moto.endpoint,
        "region": REGION,
        "allow_http": True,
        **S3_CREDENTIALS,
    }
    return Backend(url=f"s3://{BUCKET}/{prefix}", overwrite=overwrite, options=options)


@pytest.fixture(params=["local", "directory", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":  # obstore's LocalStore (the audit CAS's file://)
        return _local_backend(tmp_path)
    if request.param == "directory":  # LocalDirectoryObjects (the assets' file://)
        local = _local_backend(tmp_path)
        return Backend(local.url, local.overwrite, directory=tmp_path / "objects")
    return _s3_backend(request.getfixturevalue("moto"))


@pytest.fixture
def store(backend: Backend) -> ObjectStore:
    return backend.open()


# The object store contract.


def test_put_new_then_get_round_trips(store: ObjectStore) -> None:
    assert not store.exists("a/b.bin")
    assert store.put_new("a/b.bin", b"\x00payload\xff") is True
    assert store.exists("a/b.bin")
    assert store.get("a/b.bin") == b"\x00payload\xff"


def test_put_new_of_identical_bytes_is_a_no_op(store: ObjectStore) -> None:
    assert store.put_new("k", b"same") is True
    assert store.put_new("k", b"same") is False
    assert store.get("k") == b"same"


def test_put_new_never_overwrites_different_bytes(store: ObjectStore) -> None:
    # Locally the create-only put is a hard link that fails with EEXIST. On S3 it is a PUT with
    # If-None-Match: *; moto honours that header and answers 412 PreconditionFailed, which
    # obstore reports as AlreadyExistsError (see test_moto_refuses_a_conditional_overwrite).
    store.put_new("k", b"original")
    with pytest.raises(ObjectExists, match="'k'"):
        store.put_new("k", b"replacement")
    assert store.get("k") == b"original"


def test_get_of_a_missing_key_raises_object_missing(store: ObjectStore) -> None:
    with pytest.raises(ObjectMissing, match="'nothing/here'"):
        store.get("nothing/here")


def test_a_prefix_of_keys_is_not_an_object(store: ObjectStore) -> None:
    """A key's leading segments (a directory on disk, a prefix in a bucket) are missing."""
    store.put_new("dir/inner/leaf", b"x")
    for key in ("dir", "dir/inner"):
        with pytest.raises(ObjectMissing):
            store.get(key)


def test_a_key_under_an_object_is_missing(store: ObjectStore) -> None:
    """``k/child`` where ``k`` is an object (a file on disk, not a directory): none."""
    store.put_new("k", b"x")
    with pytest.raises(ObjectMissing):
        store.get("k/child")


def test_keys_beyond_the_plain_characters_round_trip(store: ObjectStore) -> None:
    # The local file:// store reads plain keys ([A-Za-z0-9_.-] segments) with one POSIX read
    # and hands every other key to obstore: both kinds, written through it, read back.
    keys = ["plain/k.bin", "with space/a+b=c", "dots/.hidden", "unicode/é"]
    for key in keys:
        assert store.put_new(key, key.encode()) is True
    assert [store.get(key) for key in keys] == [key.encode() for key in keys]
    assert store.list("") == sorted(keys)


def test_list_is_sorted_and_only_under_the_prefix(store: ObjectStore) -> None:
    keys = ["a/b/2", "a/b/1", "a/bc/3", "a/c", "ab/x", "z"]
    for key in keys:
        store.put_new(key, key.encode())
    assert store.list("a/b/") == ["a/b/1", "a/b/2"]
    # A plain string prefix, not a directory: "a/b" also matches "a/bc/…".
    assert store.list("a/b") == ["a/b/1", "a/b/2", "a/bc/3"]
    assert store.list("a") == ["a/b/1", "a/b/2", "a/bc/3", "a/c", "ab/x"]
    assert store.list("") == sorted(keys)
    assert store.list("missing/") == []


def test_moto_refuses_a_conditional_overwrite(moto: Moto) -> None:
    """Pins that S3's create-only path is the server's doing, not a read-before-write."""
    moto.client.put_object(Bucket=BUCKET, Key="conditional", Body=b"first")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        moto.client.put_object(Bucket=BUCKET, Key="conditional", Body=b"second", IfNoneMatch="*")


def test_a_local_staging_file_is_not_an_object(tmp_path: Path) -> None:
    """obstore writes ``key#N`` and links it into place: a crashed write leaves no object."""
    store = open_object_store((tmp_path / "objects").as_uri())
    (tmp_path / "objects" / "k#1").write_bytes(b"partial")
    assert store.list("") == []
    assert not store.exists("k")


def test_a_local_key_that_is_no_regular_file_reads_as_obstore_reads_it(tmp_path: Path) -> None:
    """A device linked in under a blob's key (tampering at rest) reads as obstore reads it —
    the size it has, 0 bytes — so the CAS reports the blob altered; it is never read for
    ever (a /dev/zero read to its end would exhaust memory)."""
    root = tmp_path / "objects"
    store = open_object_store(root.as_uri())
    cas = ContentStore(store)
    digest = cas.put(b"hello")
    key = root / cas.key_of(digest)
    key.unlink()
    key.symlink_to("/dev/zero")
    with pytest.raises(IntegrityError):
        cas.get(digest)


def test_a_local_store_reads_the_root_it_was_opened_on(tmp_path: Path) -> None:
    """The root is resolved when the store opens, as obstore's LocalStore does: a link to it
    repointed afterwards cannot make gets read another tree than the one puts write."""
    first, second, link = tmp_path / "first", tmp_path / "second", tmp_path / "cas"
    first.mkdir()
    second.mkdir()
    (second / "k").write_bytes(b"elsewhere")
    link.symlink_to(first)
    store = open_object_store(link.as_uri())
    store.put_new("k", b"here")
    link.unlink()
    link.symlink_to(second)
    assert store.get("k") == b"here"
    store.put_new("fresh", b"new")
    assert store.get("fresh") == b"new" and (first / "fresh").read_bytes() == b"new"


# The CAS on top of it.

HELLO_DIGEST = blake3(b"hello").hexdigest()


def test_cas_put_returns_the_blake3_hex_and_get_verifies(store: ObjectStore) -> None:
    cas = ContentStore(store)
    digest = cas.put(b"hello")
    assert digest == HELLO_DIGEST
    assert cas.key_of(digest) == f"blobs/{digest[:2]}/{digest}"
    assert store.get(f"blobs/{digest[:2]}/{digest}") == b"hello"
    assert cas.exists(digest)
    assert cas.get(digest) == b"hello"
    assert cas.put(b"hello") == digest  # idempotent


def test_cas_list_returns_sorted_digests_only(store: ObjectStore) -> None:
    cas = ContentStore(store)
    digests = [cas.put(bytes([n])) for n in range(5)]
    store.put_new("blobs/not-a-blob", b"x")
    store.put_new("elsewhere/x", b"x")
    assert cas.list() == sorted(digests)


def test_cas_get_of_a_tampered_object_names_the_key(store: ObjectStore, backend: Backend) -> None:
    cas = ContentStore(store)
    digest = cas.put(b"hello")
    backend.overwrite(cas.key_of(digest), b"hellO")
    with pytest.raises(IntegrityError, match=f"'blobs/{digest[:2]}/{digest}'"):
        cas.get(digest)


def test_cas_put_over_a_tampered_object_is_an_integrity_error(
    store: ObjectStore, backend: Backend
) -> None:
    cas = ContentStore(store)
    digest = cas.put(b"hello")
    backend.overwrite(cas.key_of(digest), b"corrupt")
    with pytest.raises(IntegrityError, match=digest):
        cas.put(b"hello")


def test_cas_get_of_a_missing_digest_raises_object_missing(store: ObjectStore) -> None:
    with pytest.raises(ObjectMissing):
        ContentStore(store).get(HELLO_DIGEST)


@pytest.mark.parametrize(
    "digest",
    [HELLO_DIGEST.upper(), HELLO_DIGEST[:-1], HELLO_DIGEST + "0", "g" * 64, "../" + "0" * 61, ""],
)
def test_cas_rejects_bad_digest_syntax(tmp_path: Path, digest: str) -> None:
    cas = ContentStore(open_object_store(tmp_path.as_uri()))
    with pytest.raises(ValueError, match="not a BLAKE3 digest"):
        cas.get(digest)
    with pytest.raises(ValueError, match="not a BLAKE3 digest"):
        cas.exists(digest)


# URL handling.


def test_unknown_scheme_names_the_setting_and_the_accepted_schemes() -> None:
    with pytest.raises(ValueError, match=r"gateway\.audit\.cas_url.*file, s3, gs") as error:
        open_object_store("ftp://host/dir")
    assert "ftp://host/dir" in str(error.value)
    with pytest.raises(ValueError, match=r"my\.setting"):
        open_object_store("/no/scheme", setting_name="my.setting")


@pytest.mark.parametrize("url", ["file://data/cas", "file:data/cas", "file:./cas"])
def test_relative_file_urls_are_rejected(url: str) -> None:
    with pytest.raises(ValueError, match="three slashes"):
        open_object_store(url)


def test_default_cas_url_is_an_absolute_file_url_that_opens(tmp_path: Path) -> None:
    data_dir = tmp_path / "data dir"  # a space, to check the URL is encoded and decoded
    url = default_cas_url(data_dir)
    assert url == f"file://{tmp_path.as_posix().replace(' ', '%20')}/data%20dir/cas"
    open_object_store(url).put_new("k", b"v")
    assert (data_dir / "cas" / "k").read_bytes() == b"v"


def test_an_unknown_s3_option_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"gateway\.audit\.cas_url.*no_such_option"):
        open_object_store(f"s3://{BUCKET}/x", region=REGION, no_such_option="1")

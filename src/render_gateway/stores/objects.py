"""The cold path's object store: create-only blobs in a local directory or a bucket, by URL.

Every scheme goes through obstore (the Python binding of Rust's ``object_store``), so the local
directory and S3 share one code path and one set of semantics:

* ``file:///abs/dir`` — a local directory. obstore writes each object to a staging file
  (``key#N``, opened ``O_EXCL``) and then hard-links it into place, so a reader never sees a
  partial object and a create-only put that races another loses cleanly (``EEXIST``); listings
  skip the staging files.
* ``s3://bucket/prefix`` — S3 or an S3-compatible server. Create-only puts are conditional
  (``If-None-Match: *``), which S3 has honoured since August 2024.
* ``gs://bucket/prefix``, ``az://container/prefix``, ``abfs[s]://…`` — passed to obstore's
  own URL parsing; credentials come from the environment as obstore documents.

Nothing here ever overwrites or deletes: an audit object, once written, is immutable.
"""

from __future__ import annotations

import builtins
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast
from urllib.parse import unquote, urlsplit

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError
from obstore.store import AzureStore, GCSStore, LocalStore, S3Store

if TYPE_CHECKING:
    from obstore.store import AzureConfig, ClientConfig, GCSConfig, S3Config
    from obstore.store import ObjectStore as _ObstoreStore

DEFAULT_SETTING = "gateway.audit.cas_url"

# Options that configure obstore's HTTP client rather than the store: obstore takes them in a
# separate ``client_options`` dict (passing ``allow_http`` as an S3 config key makes obstore's
# ``from_url`` panic, which Python sees as a BaseException, not an error).
_CLIENT_OPTIONS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_only",
        "pool_idle_timeout",
        "proxy_url",
        "read_timeout",
        "timeout",
        "user_agent",
    }
)

# How many times a create-only put is retried when the key is reported taken but cannot be read
# (another writer's conditional put is still in flight, or S3 answered 409 to a concurrent one).
_CREATE_ATTEMPTS = 3


class ObjectStoreError(RuntimeError):
    """An object store operation failed."""


class ObjectExists(ObjectStoreError):
    """A create-only put found different bytes already stored under the key."""


class ObjectMissing(ObjectStoreError):
    """No object is stored under the key."""


class ObjectStore(Protocol):
    """A flat, create-only key → bytes store. Keys are ``/``-separated relative paths."""

    url: str

    def put_new(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` unless the key is taken. True if this call created it;
        False if identical bytes were already there; :class:`ObjectExists` if different ones."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; :class:`ObjectMissing` if there are none."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix`` (a plain string prefix), sorted."""
        ...


class ObstoreObjectStore:
    """:class:`ObjectStore` over any obstore store."""

    def __init__(self, url: str, store: _ObstoreStore) -> None:
        self.url = url
        self._store = store

    def put_new(self, key: str, data: bytes) -> bool:
        for _ in range(_CREATE_ATTEMPTS):
            try:
                obstore.put(self._store, key, data, mode="create")
            except AlreadyExistsError:
                existing = self._get_or_none(key)
                if existing is None:
                    continue  # taken but not yet readable: try to create it again
                if existing != data:
                    raise ObjectExists(
                        f"{self._where(key)} already holds different bytes "
                        f"({len(existing)} stored, {len(data)} offered); it is never overwritten"
                    ) from None
                return False
            except BaseError as error:
                raise ObjectStoreError(f"put {self._where(key)} failed: {error}") from error
            return True
        raise ObjectStoreError(f"put {self._where(key)}: the key is taken but cannot be read")

    def get(self, key: str) -> bytes:
        data = self._get_or_none(key)
        if data is None:
            raise ObjectMissing(f"no object at {self._where(key)}")
        return data

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self._store, key)
        except FileNotFoundError:
            return False
        except BaseError as error:
            raise ObjectStoreError(f"head {self._where(key)} failed: {error}") from error
        return True

    def list(self, prefix: str) -> builtins.list[str]:
        # obstore lists whole path segments ("a/b" means "a/b/…"), so list the directory that
        # contains the prefix and filter: the protocol promises plain string-prefix semantics.
        directory = prefix.rpartition("/")[0] or None
        try:
            keys = [
                meta["path"]
                for chunk in obstore.list(self._store, directory)
                for meta in chunk
                if meta["path"].startswith(prefix)
            ]
        except BaseError as error:
            raise ObjectStoreError(f"list {self._where(prefix)}* failed: {error}") from error
        return sorted(keys)

    def _get_or_none(self, key: str) -> bytes | None:
        try:
            return bytes(obstore.get(self._store, key).bytes())
        except FileNotFoundError:
            return None
        except BaseError as error:
            raise ObjectStoreError(f"get {self._where(key)} failed: {error}") from error

    def _where(self, key: str) -> str:
        return f"{key!r} in {self.url}"

    def __repr__(self) -> str:
        return f"ObstoreObjectStore({self.url!r})"


# Keys a plain path join maps to the same file as obstore's LocalStore: nothing it would
# percent-encode, no "." or ".." segment, no staging name ("#").
_PLAIN_KEY = re.compile(r"(?!.*(?:^|/)\.\.?(?:/|$))[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")


class _LocalObstoreObjects(ObstoreObjectStore):
    """``file://``: puts, listings and ``exists`` through obstore's LocalStore (its staging
    file and hard link), gets of plain keys that name a regular file with one POSIX read of the
    size it has when opened, as obstore's own get reads; anything else (another key, a device,
    a FIFO) goes to obstore. The root is resolved once, as LocalStore does, so a link to it
    repointed later cannot part the reads from the puts. obstore's get costs a hop through its
    runtime and a second copy of the bytes (measured, 1,000 attestation batches of 1.3 MB:
    0.22-0.31 CPU-s against 0.10-0.12; 1,000 leaves of 377 bytes: 65-69 ms against 15;
    docs/BENCHMARKS.md, reconcile)."""

    def __init__(self, url: str, store: LocalStore, root: Path) -> None:
        super().__init__(url, store)
        self._root = root.resolve()

    def get(self, key: str) -> bytes:
        if not _PLAIN_KEY.fullmatch(key):
            return super().get(key)
        try:
            # O_NONBLOCK: opening a FIFO planted under the key must not wait for a writer
            fd = os.open(self._root.joinpath(key), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb", buffering=0) as file:
                size = os.fstat(fd)
                if not stat.S_ISREG(size.st_mode):
                    return super().get(key)
                return _read_up_to(file, size.st_size)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectMissing(f"no object at {self._where(key)}") from None
        except OSError as error:
            raise ObjectStoreError(f"get {self._where(key)} failed: {error}") from error


def _read_up_to(file: BinaryIO, size: int) -> bytes:
    """At most ``size`` bytes of ``file`` (fewer at its end): one read(2) returns at most about
    2 GiB, so a larger object takes several."""
    first = file.read(size) or b""
    parts, got = [first], len(first)
    while got < size:
        more = file.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return first if len(parts) == 1 else b"".join(parts)


def default_cas_url(data_dir: Path) -> str:
    """The CAS under the gateway's data directory: ``file:///<absolute data_dir>/cas``."""
    return (data_dir.absolute() / "cas").as_uri()


def open_object_store(
    url: str, *, setting_name: str = DEFAULT_SETTING, create: bool = True, **options: str | bool
) -> ObjectStore:
    """The object store at ``url``. ``options`` override what obstore reads from the environment
    (``endpoint``, ``region``, ``access_key_id``, ``secret_access_key``, ``allow_http``, …);
    a bad URL or option is a :class:`ValueError` naming ``setting_name``. ``create=False`` is
    for readers (verify, prove): a local directory that does not exist is an error, not made."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        if options:
            raise ValueError(f"{setting_name}: file:// URLs take no options, got {sorted(options)}")
        return _open_local(url, setting_name, create)
    opener = _REMOTE_OPENERS.get(scheme)
    if opener is None:
        raise ValueError(
            f"{setting_name}: unsupported object store URL {url!r}; "
            f"accepted schemes: {', '.join(ACCEPTED_SCHEMES)}"
        )
    config = {k: v for k, v in options.items() if k not in _CLIENT_OPTIONS}
    client = {k: v for k, v in options.items() if k in _CLIENT_OPTIONS}
    try:
        store = opener(url, config, client)
    except BaseError as error:
        raise ValueError(f"{setting_name}: cannot open {url!r}: {error}") from error
    return ObstoreObjectStore(url, store)


def _open_local(url: str, setting_name: str, create: bool = True) -> _LocalObstoreObjects:
    parts = urlsplit(url)
    # file://data/cas parses "data" as a host: almost always a relative path written wrongly.
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ValueError(
            f"{setting_name}: {url!r} is not an absolute file URL; "
            "write file:///absolute/path (three slashes), relative paths are not accepted"
        )
    path = Path(unquote(parts.path))
    if not create and not path.is_dir():
        raise ValueError(f"{setting_name}: {url!r}: no such directory (nothing was created)")
    try:
        store = LocalStore(path, mkdir=create)
    except (BaseError, OSError) as error:
        raise ValueError(f"{setting_name}: cannot open {url!r}: {error}") from error
    return _LocalObstoreObjects(url, store, path)


# Options arrive as strings (from settings) or bools (from code); obstore's config parsing
# accepts both, so the TypedDict casts below only reassure the type checker.
_Options = Mapping[str, str | bool]
_Opener = Callable[[str, _Options, _Options], "_ObstoreStore"]


def _open_s3(url: str, config: _Options, client: _Options) -> _ObstoreStore:
    return S3Store.from_url(
        url, config=cast("S3Config", dict(config)), client_options=_client(client)
    )


def _open_gcs(url: str, config: _Options, client: _Options) -> _ObstoreStore:
    return GCSStore.from_url(
        url, config=cast("GCSConfig", dict(config)), client_options=_client(client)
    )


def _open_azure(url: str, config: _Options, client: _Options) -> _ObstoreStore:
    return AzureStore.from_url(
        url, config=cast("AzureConfig", dict(config)), client_options=_client(client)
    )


def _client(options: _Options) -> ClientConfig | None:
    return cast("ClientConfig", dict(options)) if options else None


_REMOTE_OPENERS: dict[str, _Opener] = {
    "s3": _open_s3,
    "gs": _open_gcs,
    "az": _open_azure,
    "abfs": _open_azure,
    "abfss": _open_azure,
}
ACCEPTED_SCHEMES = ("file", *_REMOTE_OPENERS)

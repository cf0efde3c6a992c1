"""Signed, expiring asset URLs: how anyone but an asset's owner reads it.

``/assets/{id}?expires=<unix seconds>&signature=<base64url HMAC-SHA256>``. The HMAC covers the
asset id and the expiry, under a gateway secret kept in ``<data_dir>/asset_url_secret`` (mode
0600, created on first start), or read from ``[gateway] asset_url_secret_file``, which every
replica shares (base64 of at least 32 bytes on one line). Whoever holds the URL may read the
bytes until it expires; changing the id or the expiry breaks the signature.

Expiries are rounded up to a step (an hour for long lifetimes) so that the URL handed out for an
asset stays the same for a while: a browser or a CDN caching it ``public, immutable`` gets hits.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import math
import os
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

_KEY_BYTES = 32
_CONTEXT = b"render-asset-url.v1\n"  # domain separation: this key signs nothing else
MAX_STEP_SECONDS = 3600


class UrlCheck(enum.Enum):
    valid = "valid"
    expired = "expired"
    invalid = "invalid"


@dataclass(frozen=True)
class SignedUrl:
    url: str  # a path on this gateway: /assets/{id}?expires=…&signature=…
    expires: int  # unix seconds


@dataclass(frozen=True)
class AssetUrlSigner:
    key: bytes = field(repr=False)  # never in a log line or a traceback
    ttl_seconds: int
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if len(self.key) < _KEY_BYTES:
            raise ValueError(f"an asset URL key has at least {_KEY_BYTES} bytes")
        if self.ttl_seconds < 1:
            raise ValueError("asset URLs must live at least one second")

    @classmethod
    def load_or_create(
        cls, path: Path, ttl_seconds: int, shared: Path | None = None
    ) -> AssetUrlSigner:
        """The key in ``shared`` when given (it must exist: see ``load``); else the key in
        ``path`` (refused if others can read it), a new one written there with mode 0600 if the
        file is absent."""
        if shared is not None:
            return cls.load(shared, ttl_seconds)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            # O_EXCL + mode at creation: never readable by others, and two processes starting
            # together cannot both write a different key.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(_read_key(path), ttl_seconds)
        key = secrets.token_bytes(_KEY_BYTES)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(base64.b64encode(key).decode("ascii") + "\n")
            file.flush()
            os.fsync(file.fileno())
        return cls(key, ttl_seconds)

    @classmethod
    def load(cls, path: Path, ttl_seconds: int) -> AssetUrlSigner:
        """The key in ``path`` (``[gateway] asset_url_secret_file``), which must exist: a URL
        minted by one replica verifies on every other only if none creates its own."""
        if not path.is_file():
            raise ValueError(
                f"gateway.asset_url_secret_file: {path} does not exist (copy a replica's "
                "<data_dir>/asset_url_secret there)"
            )
        return cls(_read_key(path), ttl_seconds)

    def fingerprint(self) -> str:
        """An HMAC of a fixed text under the key: equal on two replicas iff their keys are,
        and says nothing of the key itself."""
        return hmac.new(self.key, _CONTEXT + b"fingerprint", hashlib.sha256).hexdigest()

    def _signature(self, asset_id: str, expires: int) -> str:
        message = _CONTEXT + f"{asset_id}\n{expires}".encode()
        digest = hmac.new(self.key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def expiry(self, ttl_seconds: int | None = None) -> int:
        """Now + the lifetime, rounded up to a step of at most an hour (a tenth of a short
        lifetime): the same URL for every request within one step."""
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        step = max(1, min(MAX_STEP_SECONDS, ttl // 10))
        return math.ceil((self.clock() + ttl) / step) * step

    def sign(self, asset_id: str, ttl_seconds: int | None = None) -> SignedUrl:
        expires = self.expiry(ttl_seconds)
        signature = self._signature(asset_id, expires)
        return SignedUrl(f"/assets/{asset_id}?expires={expires}&signature={signature}", expires)

    def url(self, asset_id: str) -> str:
        """The URL that job views, events, webhooks and ``Content-Location`` carry."""
        return self.sign(asset_id).url

    def check(self, asset_id: str, query: Mapping[str, str]) -> UrlCheck:
        """Whether ``query`` (``expires`` and ``signature``) grants a read of ``asset_id`` now."""
        expires_text, signature = query.get("expires", ""), query.get("signature", "")
        if not (expires_text.isdigit() and len(expires_text) <= 12) or not signature:
            return UrlCheck.invalid
        expires = int(expires_text)
        expected = self._signature(asset_id, expires)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            return UrlCheck.invalid
        return UrlCheck.valid if self.clock() < expires else UrlCheck.expired

    def seconds_left(self, query: Mapping[str, str]) -> int:
        """How long a URL that ``check`` found valid still lives (its cache lifetime)."""
        return max(0, int(query["expires"]) - math.floor(self.clock()))


def is_signed(query: Mapping[str, str]) -> bool:
    return "signature" in query or "expires" in query


def _read_key(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(
            f"{path} holds the asset URL signing key but is accessible by group or others "
            f"(mode {mode:04o}); run 'chmod 600 {path}'"
        )
    try:
        key = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(f"{path} does not hold a base64 asset URL key") from None
    if len(key) < _KEY_BYTES:
        raise ValueError(f"{path}: an asset URL key has at least {_KEY_BYTES} bytes")
    return key

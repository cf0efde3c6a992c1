"""Customer uploads: ``POST /uploads`` signs a one-time PUT URL, the PUT stores the bytes as an
asset the customer owns, usable at once as a job's ``image``/``mask`` (asset_inputs.py).

The URL is ``/uploads/{asset_id}?owner=…&type=…&bytes=…&expires=…&signature=…``: an HMAC-SHA256
over the asset id (drawn now, ≈ 101 random bits), the owner, the content type, the declared
size and the expiry, so changing any of them breaks it. Its key is derived from the asset URL
secret (which every replica shares) under its own label, so an upload signature is never an
asset URL signature or the other way round. The URL itself is the PUT's credential.

The gateway keeps no state per upload: the asset id is written create-only (``AssetStore.put``
with ``asset_id``), so the first PUT that gets its bytes stored spends the URL and every later
one is a 409 — on any replica, since the store is shared. A PUT that is refused (a wrong type,
a wrong size, bytes that are not the image declared) stores nothing and leaves the URL usable.

The PUT's body is streamed, never buffered past the declared size (at most ``MAX_UPLOAD_BYTES``):
a ``Content-Length`` other than the declared size is refused before a byte is read, a chunked
body is cut off at the first byte past it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import math
import time
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import orjson
from PIL import Image

from render_gateway.application.asset_urls import AssetUrlSigner
from render_gateway.application.refusals import RefusalKind, Refused
from render_gateway.auth.principal import Principal
from render_gateway.core.ids import new_asset_id
from render_gateway.inference.media_types import sniff_media_type
from render_gateway.stores.assets import ASSET_ID, Asset, AssetExists, AssetNotFound, AssetStore

MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # the contract's limit
# The types an upload may declare: the images a job's image/mask takes, and Pillow's names.
UPLOAD_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_KEY_LABEL = b"render-upload-url.v1 key"
_QUERY = ("owner", "type", "bytes", "expires", "signature")


@dataclass(frozen=True)
class UploadGrant:
    """What a signed upload URL allows: one PUT of exactly these bytes, until ``expires``."""

    asset_id: str
    owner: str
    content_type: str
    size: int
    expires: int  # unix seconds

    @property
    def path(self) -> str:
        return f"/uploads/{self.asset_id}"


@dataclass(frozen=True)
class Ticket:
    """``POST /uploads``'s answer: where to PUT, and the asset the bytes will be."""

    grant: UploadGrant
    upload_path: str  # /uploads/{id}?… (the API makes it absolute)
    asset_path: str  # the signed GET URL the asset will have: /assets/{id}?…


def _refused(kind: RefusalKind, code: str, message: str, **details: object) -> Refused:
    return Refused(kind, code, message, dict(details))


def check_declared(content_type: object, size: object) -> tuple[str, int]:
    """The declared type and size, or an ``invalid_request`` naming the field."""
    if not isinstance(content_type, str) or content_type not in UPLOAD_TYPES:
        raise _refused(
            RefusalKind.invalid, "invalid_request",
            f"content_type: one of {', '.join(UPLOAD_TYPES)}", field="content_type",
        )  # fmt: skip
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_UPLOAD_BYTES:
        raise _refused(
            RefusalKind.invalid, "invalid_request",
            f"bytes: the size in bytes, 1 to {MAX_UPLOAD_BYTES}", field="bytes",
            maximum=MAX_UPLOAD_BYTES,
        )  # fmt: skip
    return content_type, size


def media_type_of(header: str | None) -> str:
    """``image/png`` of ``Image/PNG; charset=x`` (parameters mean nothing for these types)."""
    return (header or "").split(";", 1)[0].strip().lower()


def image_problem(data: bytes, declared: str) -> str | None:
    """Why ``data`` is not an image of the declared type, or None: the magic bytes first, then
    Pillow reads the header and checks the structure (``verify``: PNG chunk CRCs, …) without
    decoding the pixels; more pixels than Pillow's decompression-bomb limit is refused too."""
    sniffed = sniff_media_type(data)
    if sniffed != declared:
        return f"the bytes are {sniffed or 'not a PNG, JPEG or WebP image'}, not {declared}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[UPLOAD_TYPES[declared]]) as image:
                image.verify()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return f"the image has more than {Image.MAX_IMAGE_PIXELS} pixels"
    except Exception:  # Pillow raises many kinds on malformed bytes
        return f"the bytes are not a readable {declared} image"
    return None


class Uploads:
    """The two use cases: sign an upload (``create``), take its bytes (``receive``)."""

    def __init__(
        self,
        assets: AssetStore,
        asset_urls: AssetUrlSigner,
        ttl_seconds: int,
        timeout_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._assets, self._asset_urls = assets, asset_urls
        self.ttl_seconds, self.timeout_seconds = ttl_seconds, timeout_seconds
        self._clock = clock
        self._key = hmac.new(asset_urls.key, _KEY_LABEL, hashlib.sha256).digest()

    def _signature(self, grant: UploadGrant) -> str:
        # A JSON array: no owner or type can shift a boundary between the fields.
        message = orjson.dumps(
            [grant.asset_id, grant.owner, grant.content_type, grant.size, grant.expires]
        )
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def create(self, principal: Principal, content_type: object, size: object) -> Ticket:
        declared_type, declared_size = check_declared(content_type, size)
        expires = math.ceil(self._clock() + self.ttl_seconds)
        grant = UploadGrant(
            new_asset_id(), principal.customer_id, declared_type, declared_size, expires
        )
        query = {"owner": grant.owner, "type": grant.content_type, "bytes": str(grant.size),
                 "expires": str(expires), "signature": self._signature(grant)}  # fmt: skip
        return Ticket(grant, f"{grant.path}?{urlencode(query)}", self.asset_path(grant.asset_id))

    def asset_path(self, asset_id: str) -> str:
        return self._asset_urls.url(asset_id)

    def grant_of(self, asset_id: str, query: Mapping[str, str]) -> UploadGrant:
        """The grant a PUT's URL carries: 403 ``upload_url_invalid`` unless its signature
        matches, 410 ``upload_url_expired`` once it has expired."""
        invalid = _refused(
            RefusalKind.forbidden, "upload_url_invalid",
            "this upload URL's signature does not match; ask POST /uploads for one",
        )  # fmt: skip
        size_text, expires_text = query.get("bytes", ""), query.get("expires", "")
        if not (
            ASSET_ID.fullmatch(asset_id)
            and all(query.get(name) for name in _QUERY)
            and size_text.isdecimal() and len(size_text) <= 12
            and expires_text.isdecimal() and len(expires_text) <= 12
        ):  # fmt: skip
            raise invalid
        grant = UploadGrant(
            asset_id, query["owner"], query["type"], int(size_text), int(expires_text)
        )
        signature = query["signature"].encode("utf-8", "replace")
        if not hmac.compare_digest(self._signature(grant).encode(), signature):
            raise invalid
        if self._clock() >= grant.expires:
            raise _refused(
                RefusalKind.gone, "upload_url_expired",
                "this upload URL has expired; ask POST /uploads for a new one",
            )  # fmt: skip
        return grant

    async def receive(
        self,
        asset_id: str,
        query: Mapping[str, str],
        content_type: str | None,
        content_length: str | None,
        body: AsyncIterator[bytes],
    ) -> Asset:
        """The PUT: check the URL, the declared type and size, then stream the body (at most
        the declared size, within ``timeout_seconds``), check the bytes are that image, and
        store them under the grant's id for its owner."""
        grant = self.grant_of(asset_id, query)
        await self._unused(grant)
        if media_type_of(content_type) != grant.content_type:
            raise _refused(
                RefusalKind.invalid, "upload_content_type_mismatch",
                f"Content-Type must be {grant.content_type}, as declared (got "
                f"{(content_type or 'none')[:100]!r})", expected=grant.content_type,
            )  # fmt: skip
        if content_length is not None and content_length.strip() != str(grant.size):
            raise self._wrong_size(grant, f"Content-Length is {content_length.strip()[:20]}")
        try:
            async with asyncio.timeout(self.timeout_seconds):
                data = await self._read(grant, body)
        except TimeoutError:
            raise _refused(
                RefusalKind.timeout, "request_timeout",
                f"the upload did not arrive within {self.timeout_seconds:g} s",
            ) from None  # fmt: skip
        problem = await asyncio.to_thread(image_problem, data, grant.content_type)
        if problem is not None:
            raise _refused(RefusalKind.invalid, "upload_not_image", problem)
        try:
            return await self._assets.put(
                data, grant.content_type, grant.owner, asset_id=grant.asset_id
            )
        except AssetExists:
            raise self._used(grant) from None

    async def _unused(self, grant: UploadGrant) -> None:
        """A URL whose asset is stored is spent: 409 before any byte is read."""
        try:
            await self._assets.describe(grant.asset_id)
        except AssetNotFound:
            return
        raise self._used(grant)

    def _used(self, grant: UploadGrant) -> Refused:
        return _refused(
            RefusalKind.conflict, "upload_used",
            f"this upload URL was used: asset {grant.asset_id} is stored; ask POST /uploads "
            "for another", asset_id=grant.asset_id,
        )  # fmt: skip

    def _wrong_size(self, grant: UploadGrant, what: str) -> Refused:
        return _refused(
            RefusalKind.invalid, "upload_size_mismatch",
            f"{what}; this upload URL takes exactly {grant.size} bytes, as declared",
            expected=grant.size,
        )  # fmt: skip

    async def _read(self, grant: UploadGrant, body: AsyncIterator[bytes]) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in body:
            size += len(chunk)
            if size > grant.size:  # stop reading: nothing past the declared size is kept
                raise self._wrong_size(grant, "the body is longer")
            chunks.append(chunk)
        if size != grant.size:
            raise self._wrong_size(grant, f"the body has {size} bytes")
        return b"".join(chunks)

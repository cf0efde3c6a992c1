"""Input images in (data URIs, remote URLs) and output media out (PNG, MP4), checked strictly."""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from PIL import Image, UnidentifiedImageError

from render_gateway.url_policy import (
    UrlPolicy,
    UrlRefused,
    check_literal,
    guarded_connector,
    refusal_in,
)

if TYPE_CHECKING:
    import numpy as np

ACCEPTED_IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_DATA_URI = re.compile(r"^data:image/(png|jpeg|jpg|webp);base64,(.*)$", re.DOTALL)
MAX_INPUT_PIXELS = 4096 * 4096


class MediaError(ValueError):
    """An input image that cannot be used; the message says why (a 400 for the caller)."""


@dataclass(frozen=True)
class RemoteImagePolicy:
    enabled: bool = True
    max_bytes: int = 20 * 1024 * 1024
    timeout_seconds: float = 10.0
    allow_http: bool = False
    allow_private_addresses: bool = False


def decode_image(data: bytes, what: str) -> Image.Image:
    """Decode PNG/JPEG/WebP bytes fully (so truncation is caught here, not mid-run)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            kind = probe.format
            width, height = probe.size
            if kind not in ACCEPTED_IMAGE_TYPES:
                raise MediaError(f"{what} is {kind or 'an unknown format'}; send PNG, JPEG or WebP")
            if width * height > MAX_INPUT_PIXELS:
                raise MediaError(f"{what} is {width}x{height}; at most {MAX_INPUT_PIXELS} pixels")
            probe.load()
            return probe.copy()
    except MediaError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as exc:
        raise MediaError(f"{what} is not a valid PNG, JPEG or WebP image: {exc}") from exc


def parse_data_uri(reference: str, what: str) -> bytes:
    match = _DATA_URI.match(reference)
    if match is None:
        raise MediaError(f"{what} must be data:image/(png|jpeg|webp);base64,… or an https URL")
    try:
        return base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"{what} has invalid base64 data: {exc}") from exc


async def load_image(reference: str, what: str, policy: RemoteImagePolicy) -> Image.Image:
    if reference.startswith("data:"):
        return decode_image(parse_data_uri(reference, what), what)
    return decode_image(await fetch_remote(reference, what, policy), what)


async def fetch_remote(url: str, what: str, policy: RemoteImagePolicy) -> bytes:
    addresses = UrlPolicy(policy.allow_http, policy.allow_private_addresses)
    parts = urlsplit(url)
    if parts.scheme not in addresses.schemes or not parts.hostname:
        raise MediaError(f"{what} must be a data URI or an {'/'.join(addresses.schemes)} URL")
    if not policy.enabled:
        raise MediaError(f"{what}: this worker does not fetch remote URLs; send a data URI")
    try:
        check_literal(url, addresses)
    except UrlRefused as exc:
        raise MediaError(f"{what}: {exc}") from None
    timeout = aiohttp.ClientTimeout(total=policy.timeout_seconds)
    try:
        # The connector checks the addresses it connects to (url_policy: no rebinding window).
        async with (
            aiohttp.ClientSession(
                timeout=timeout, connector=guarded_connector(addresses)
            ) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            if response.status != 200:
                raise MediaError(f"{what}: fetching {url} answered HTTP {response.status}")
            if (response.content_length or 0) > policy.max_bytes:
                raise MediaError(f"{what} is larger than {policy.max_bytes} bytes")
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > policy.max_bytes:
                    raise MediaError(f"{what} is larger than {policy.max_bytes} bytes")
            return bytes(body)
    except TimeoutError as exc:
        raise MediaError(
            f"{what}: fetching {url} took longer than {policy.timeout_seconds}s"
        ) from exc
    except aiohttp.ClientError as exc:
        if (refused := refusal_in(exc)) is not None:
            raise MediaError(f"{what}: {refused}") from None
        raise MediaError(f"{what}: fetching {url} failed: {exc}") from exc


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_mp4(frames: np.ndarray[Any, Any], fps: int) -> bytes:
    """H.264 in MP4 from uint8 frames shaped (count, height, width, 3); deterministic."""
    import av

    buffer = io.BytesIO()
    count, height, width, _ = frames.shape
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Identical bytes for identical frames: one thread, and no lookahead/macroblock-tree
        # (with them libx264 gave a different stream about once in 1,000 encodes here).
        stream.options = {"threads": "1", "tune": "zerolatency"}
        for index in range(count):
            # Convert to the encoder's format explicitly, frame by frame.
            rgb = av.VideoFrame.from_ndarray(frames[index], format="rgb24")
            frame = rgb.reformat(format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()

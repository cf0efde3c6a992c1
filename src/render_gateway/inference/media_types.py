"""The media type of an output read from its first bytes, for a backend that declares none (a
Triton model returns bare BYTES): the formats a generative-media model returns."""

from __future__ import annotations

import re

# A declared type the gateway stores and serves as is (a signed asset URL, on its own origin):
# image, video or audio, in plain media-type syntax. Anything else (text/html, SVG, a value
# with a newline that would break the header) is ignored and the bytes are read instead.
_SERVABLE = re.compile(r"(?:image|video|audio)/[a-z0-9][a-z0-9.+-]{0,63}")

_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm"),
)


def sniff_media_type(data: bytes) -> str | None:
    """``image/png``, ``image/jpeg``, ``image/webp``, ``image/gif``, ``video/mp4``,
    ``video/webm``; None when the bytes are none of these."""
    for offset, magic, media_type in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":  # ISO base media: MP4, and its image cousins
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"mif1"):
            return "image/heic"
        return "video/mp4"
    return None


def servable_media_type(declared: object) -> str | None:
    """A backend's declared content type when it is safe to serve from the gateway; None
    otherwise (then sniffed)."""
    if not isinstance(declared, str):
        return None
    media = declared.strip().lower()
    if not _SERVABLE.fullmatch(media) or "svg" in media or "xml" in media:
        return None
    return media

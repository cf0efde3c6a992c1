"""The media type of an output read from its first bytes, for a backend that declares none (a
Triton model returns bare BYTES): the formats a generative-media model returns."""

from __future__ import annotations

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

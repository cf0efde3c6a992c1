"""The output formats of the public contract (API.md): names mapped to width × height."""

from __future__ import annotations

from typing import Literal

Modality = Literal["image", "video"]

IMAGE_FORMATS: dict[str, tuple[int, int]] = {
    "1024": (1024, 1024),
    "512": (512, 512),
    "portrait": (768, 1024),
    "portrait-wide": (576, 1024),
    "landscape": (1024, 768),
    "landscape-wide": (1024, 576),
}

VIDEO_FORMATS: dict[str, tuple[int, int]] = {
    "720p": (1280, 720),
    "720p-portrait": (720, 1280),
    "480p": (832, 480),
    "480p-portrait": (480, 832),
    "square": (640, 640),
}

DEFAULT_FORMAT: dict[Modality, str] = {"image": "1024", "video": "720p"}


def format_size(modality: Modality, name: str) -> tuple[int, int]:
    """Width and height of a named format; KeyError names the valid choices."""
    table = IMAGE_FORMATS if modality == "image" else VIDEO_FORMATS
    try:
        return table[name]
    except KeyError:
        choices = ", ".join(sorted(table))
        raise KeyError(f"unknown {modality} format {name!r}; choose one of: {choices}") from None

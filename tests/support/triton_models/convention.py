"""What every test model shares: the request JSON, a real PNG, and the events file.

Imported by serve.py (PyTriton's process) and by the raw Python-backend models (Triton's stub
processes, which find it because serve.py copies it next to each model.py). Standard library
only: the Triton venv has numpy but no PIL.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from typing import Any

DEFAULT_SIZE = 64


def parse_request(raw: bytes | str) -> dict[str, Any]:
    """The generation JSON carried by the ``request`` input (BYTES, shape [1])."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    fields = json.loads(text)
    if not isinstance(fields, dict):
        raise ValueError("input 'request' must be a JSON object")
    return fields


def size_of(fields: dict[str, Any]) -> tuple[int, int]:
    return int(fields.get("width", DEFAULT_SIZE)), int(fields.get("height", DEFAULT_SIZE))


def png(width: int, height: int, seed: int) -> bytes:
    """A decodable RGB PNG of ``width`` x ``height``: a gradient tinted by the seed."""
    tint = seed % 256
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type None for this scanline
        for x in range(width):
            rows += bytes(((x * 255) // max(width - 1, 1), (y * 255) // max(height - 1, 1), tint))

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows)))
        + chunk(b"IEND", b"")
    )


def record(events_path: str, model: str, event: str, request_id: str | None, **extra: Any) -> None:
    """Append one event line. One ``write`` on an O_APPEND file per line, so lines from
    PyTriton's process and from the stub processes do not interleave."""
    line = {"model": model, "event": event, "id": request_id, "t": time.time(), **extra}
    data = (json.dumps(line) + "\n").encode("utf-8")
    fd = os.open(events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)

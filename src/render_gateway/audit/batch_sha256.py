"""SHA-256 over many messages per call: the leaf hashes of a batch's rows and their RFC 6962 root.

A records root over n rows is 2n − 1 SHA-256 calls. Made one ``hashlib`` call at a time they
cost ~1.9 µs per row here, most of it call overhead (docs/BENCHMARKS.md, issue 16); the native
module ``_batch_sha256`` (C over OpenSSL's libcrypto, built by setup.py) loops over the Arrow
buffers with the GIL released, ~0.5 µs per row. Where it was not built, the pure-Python
reference below is used; both hash exactly the same bytes, and the tests hold them to each
other.
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np

from render_gateway.audit import merkle

try:
    from render_gateway.audit import _batch_sha256
except ImportError:  # built optionally (setup.py): no C compiler or no OpenSSL headers
    NATIVE = False
else:
    NATIVE = True


def reference_hash_slices(data: bytes | memoryview, offsets: np.ndarray) -> bytes:
    """SHA-256 of ``data[offsets[i]:offsets[i + 1]]`` for each i, the digests concatenated:
    a batch's joined rows hashed one ``hashlib`` call at a time (the path where the native
    module was not built; :func:`hash_rows` with one variable piece hashes the same)."""
    bounds = _checked_offsets(data, offsets).tolist()
    view = memoryview(data)
    sha256 = hashlib.sha256
    return b"".join(sha256(view[a:b]).digest() for a, b in itertools.pairwise(bounds))


def reference_hash_rows(rows: int, pieces: list[tuple[memoryview, int | np.ndarray]]) -> bytes:
    """The digests :func:`hash_rows` returns: each row joined from its pieces, then hashed."""
    bounds: list[list[int]] = []
    for data, shape in pieces:
        if isinstance(shape, int):
            if shape < 0 or len(data) != rows * shape:
                raise ValueError("a fixed-width piece must be rows x width")
            bounds.append([row * shape for row in range(rows + 1)])
        else:
            if len(shape) != rows + 1:
                raise ValueError("a variable piece needs rows + 1 offsets")
            bounds.append(_checked_offsets(data, shape).tolist())
    views = [memoryview(data) for data, _ in pieces]
    sha256 = hashlib.sha256
    pairs = list(zip(views, bounds, strict=True))
    return b"".join(
        sha256(b"".join(view[at[row] : at[row + 1]] for view, at in pairs)).digest()
        for row in range(rows)
    )


def reference_tree_root(leaf_hashes: bytes) -> bytes:
    """RFC 6962's MTH over 32-byte leaf hashes laid end to end."""
    if len(leaf_hashes) % merkle.HASH_SIZE:
        raise ValueError("leaf hashes are 32 bytes each")
    size = merkle.HASH_SIZE
    return merkle.root([leaf_hashes[at : at + size] for at in range(0, len(leaf_hashes), size)])


def _checked_offsets(data: bytes | memoryview, offsets: np.ndarray) -> np.ndarray:
    if offsets.ndim != 1 or offsets.dtype not in (np.int32, np.int64) or len(offsets) < 1:
        raise ValueError("offsets must be a non-empty int32 or int64 array")
    if offsets[0] < 0 or offsets[-1] > len(data) or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be non-decreasing and within data")
    return offsets


def hash_rows(rows: int, pieces: list[tuple[memoryview, int | np.ndarray]]) -> bytes:
    """SHA-256 of each of ``rows`` rows made of pieces laid end to end, the digests
    concatenated: a piece is ``(data, width)``, row i being ``data[i*width:(i+1)*width]``, or
    ``(data, offsets)``, row i being ``data[offsets[i]:offsets[i + 1]]``. The native module
    copies each row into one scratch buffer and hashes it; the reference joins the rows."""
    if NATIVE:
        return _batch_sha256.hash_rows(rows, pieces)
    return reference_hash_rows(rows, pieces)


def tree_root(leaf_hashes: bytes) -> bytes:
    """RFC 6962's MTH over 32-byte leaf hashes laid end to end (merkle.root's tree)."""
    if NATIVE:
        return _batch_sha256.tree_root(leaf_hashes)
    return reference_tree_root(leaf_hashes)


def leaf_hashes(messages: list[bytes]) -> bytes:
    """RFC 6962 leaf hashes SHA-256(0x00 ‖ message) of ``messages``, 32 bytes each, end to end."""
    offsets = np.zeros(len(messages) + 1, np.int64)
    np.cumsum([len(message) for message in messages], out=offsets[1:])
    prefix = memoryview(b"\x00" * len(messages))
    return hash_rows(len(messages), [(prefix, 1), (memoryview(b"".join(messages)), offsets)])


def tree_levels(leaf_hashes: bytes) -> list[bytes]:
    """Every level of RFC 6962's tree over the leaf hashes, leaves first and the root (one hash)
    last, each level's hashes end to end: a level's pairs hashed as SHA-256(0x01 ‖ left ‖ right)
    in one call, an odd last node carried up unchanged (merkle.root's tree)."""
    size = merkle.HASH_SIZE
    if not leaf_hashes or len(leaf_hashes) % size:
        raise ValueError("leaf hashes are 32 bytes each, at least one")
    levels = [leaf_hashes]
    while len(levels[-1]) > size:
        below = levels[-1]
        pairs = len(below) // (2 * size)
        prefix = memoryview(b"\x01" * pairs)
        above = hash_rows(pairs, [(prefix, 1), (memoryview(below)[: pairs * 2 * size], 2 * size)])
        if len(below) // size % 2:
            above += below[-size:]
        levels.append(above)
    return levels

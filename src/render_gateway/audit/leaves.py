"""A log leaf: one attestation batch as the Merkle log commits to it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import orjson

from render_gateway.audit.merkle import leaf_hash

# A leaf's version is its batch's row encoding (attestations.ROW_V1 / ROW_V2): how the rows
# are hashed into ``records_root``. The leaf is in the signed tree, so its version is too.
LEAF_VERSION = 2
LEAF_VERSIONS = (1, 2)
LEAVES_PREFIX = "log/leaves/"
CHECKPOINTS_PREFIX = "log/checkpoints/"


def leaf_key(index: int) -> str:
    return f"{LEAVES_PREFIX}{index:020d}"


def checkpoint_key(size: int) -> str:
    return f"{CHECKPOINTS_PREFIX}{size:020d}"


def index_of(key: str, prefix: str) -> int:
    """The number in a leaf or checkpoint key; ValueError if the key is not one of ours."""
    digits = key.removeprefix(prefix)
    if not key.startswith(prefix) or len(digits) != 20 or not digits.isdigit():
        raise ValueError(f"{key!r} is not a {prefix}<20 digits> key")
    return int(digits)


class LeafError(ValueError):
    """Leaf bytes that are not a canonical leaf."""


@dataclass(frozen=True)
class BatchLeaf:
    index: int  # its place in the log
    batch_blake3: str  # the Parquet file's BLAKE3 (its CAS key)
    records_root: str  # RFC 6962 root (hex) over the batch's rows, for per-record proofs
    count: int
    gpu_seconds: float
    first_usage_seq: int  # the usage-log records it holds: exactly first..last, in order
    last_usage_seq: int
    window_start_us: int  # earliest and latest request end in the batch
    window_end_us: int
    timestamp_us: int  # when it was appended; strictly increasing along the log
    version: int = LEAF_VERSION

    def encode(self) -> bytes:
        # The fields read directly: the bytes of asdict() (every field is a plain int, str or
        # float) at a fraction of the cost; asdict deep-copies each field, and decode
        # re-encodes every leaf it reads to check its form.
        values = {name: getattr(self, name) for name in _LEAF_FIELDS}
        return orjson.dumps(values, option=orjson.OPT_SORT_KEYS)

    @property
    def hash(self) -> bytes:
        return leaf_hash(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> BatchLeaf:
        try:
            fields: Any = orjson.loads(data)
            leaf = cls(**fields)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise LeafError(f"not a leaf: {exc}") from exc
        if leaf.encode() != data:
            raise LeafError("leaf bytes are not in canonical form")
        if leaf.version not in LEAF_VERSIONS:
            raise LeafError(f"unknown leaf version {leaf.version}")
        return leaf


_LEAF_FIELDS = tuple(field.name for field in fields(BatchLeaf))

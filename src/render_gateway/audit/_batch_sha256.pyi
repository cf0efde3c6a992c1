# The native module built from _batch_sha256.c (see render_gateway.audit.batch_sha256).
from typing import Any

import numpy as np
from _typeshed import ReadableBuffer

def hash_rows(
    rows: int, pieces: list[tuple[memoryview, int | np.ndarray[Any, Any]]], /
) -> bytes: ...
def tree_root(leaf_hashes: ReadableBuffer, /) -> bytes: ...

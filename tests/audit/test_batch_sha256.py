"""The batch SHA-256 (render_gateway.audit.batch_sha256): the native module against hashlib and
the pure-Python RFC 6962 tree, on arbitrary messages and every small tree size, and its refusal
of offsets that would read outside the data."""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from render_gateway.audit import _batch_sha256, batch_sha256, merkle


def test_the_native_module_is_built() -> None:
    # make install builds it (setup.py, OpenSSL's headers from libssl-dev); without it every
    # records root falls back to one hashlib call per row, ~4x slower, and nothing else fails.
    assert batch_sha256.NATIVE


def _offsets(messages: list[bytes], dtype: type[np.signedinteger[object]]) -> np.ndarray:
    offsets = np.zeros(len(messages) + 1, dtype)
    offsets[1:] = np.cumsum([len(m) for m in messages])
    return offsets


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=40), st.sampled_from([np.int32, np.int64]))
def test_one_variable_piece_is_sha256_of_each_slice(messages: list[bytes], dtype: type) -> None:
    # The native hash_rows over a batch's joined rows, and the fallback that hashes them.
    data = b"".join(messages)
    offsets = _offsets(messages, dtype)
    expected = b"".join(hashlib.sha256(m).digest() for m in messages)
    assert _batch_sha256.hash_rows(len(messages), [(memoryview(data), offsets)]) == expected
    assert batch_sha256.reference_hash_slices(data, offsets) == expected


def test_a_piece_reads_an_arrow_arrays_own_buffers_at_an_offset() -> None:
    # A sliced Arrow array's offsets start past zero: what table_leaf_hashes hands over.
    array = pa.array([b"a", b"bc", b"", b"def", b"ghij"]).slice(1, 3)
    offsets = np.frombuffer(array.buffers()[1], np.int32, len(array) + 1, array.offset * 4)
    got = batch_sha256.hash_rows(len(array), [(memoryview(array.buffers()[2]), offsets)])
    assert got == b"".join(hashlib.sha256(m).digest() for m in (b"bc", b"", b"def"))


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 12).flatmap(
        lambda rows: st.tuples(
            st.just(rows),
            st.lists(
                st.one_of(
                    st.integers(0, 9).map(lambda width: ("fixed", width)),
                    st.lists(st.binary(max_size=40), min_size=rows, max_size=rows).map(
                        lambda values: ("variable", values)
                    ),
                ),
                max_size=6,
            ),
        )
    ),
    st.sampled_from([np.int32, np.int64]),
)
def test_hash_rows_is_sha256_of_each_row_joined(case: tuple[int, list], dtype: type) -> None:
    rows, shapes = case
    rng = np.random.default_rng(rows)
    pieces: list[tuple[memoryview, int | np.ndarray]] = []
    joined = [b""] * rows
    for kind, shape in shapes:
        if kind == "fixed":
            block = rng.integers(0, 256, (rows, shape), dtype=np.uint8)
            pieces.append((block.reshape(-1).data, shape))
            joined = [row + block[i].tobytes() for i, row in enumerate(joined)]
        else:
            pieces.append((memoryview(b"".join(shape)), _offsets(shape, dtype)))
            joined = [row + value for row, value in zip(joined, shape, strict=True)]
    expected = b"".join(hashlib.sha256(row).digest() for row in joined)
    assert _batch_sha256.hash_rows(rows, pieces) == expected
    assert batch_sha256.reference_hash_rows(rows, pieces) == expected


@pytest.mark.parametrize(
    "pieces",
    [
        [(memoryview(b"abcdef"), 4)],  # 2 rows x 4 is not 6 bytes
        [(memoryview(b"abcdef"), np.array([0, 3], np.int32))],  # 2 offsets for 2 rows
        [(memoryview(b"abcdef"), np.array([0, 3, 9], np.int32))],  # past the end
        [(memoryview(b"abcdef"), np.array([0, 4, 3], np.int64))],  # decreasing
        [(memoryview(b"abcdef"), -3)],
    ],
)
def test_hash_rows_refuses_pieces_that_do_not_fit_the_rows(pieces: list) -> None:
    for implementation in (_batch_sha256.hash_rows, batch_sha256.reference_hash_rows):
        with pytest.raises(ValueError):
            implementation(2, pieces)


@pytest.mark.parametrize("size", [*range(0, 70), 127, 128, 129, 255, 256, 257, 10_000])
def test_tree_root_is_rfc6962s_tree(size: int) -> None:
    leaves = [
        hashlib.sha256(size.to_bytes(4, "big") + i.to_bytes(4, "big")).digest() for i in range(size)
    ]
    expected = merkle.root(leaves)
    assert _batch_sha256.tree_root(b"".join(leaves)) == expected
    assert batch_sha256.reference_tree_root(b"".join(leaves)) == expected
    if size <= 16:  # and the RFC's own recursive definition, independent of merkle.root
        assert expected == _recursive_root(leaves)


def _recursive_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    left, right = _recursive_root(leaves[:split]), _recursive_root(leaves[split:])
    return hashlib.sha256(b"\x01" + left + right).digest()


BAD_OFFSETS = {
    "past the end": np.array([0, 7], np.int32),
    "negative start": np.array([-1, 2], np.int64),
    "decreasing": np.array([0, 4, 3], np.int32),
    "floats": np.array([0.0, 3.0]),
    "unsigned": np.array([0, 3], np.uint32),
    "big-endian": np.array([0, 3], ">i4"),
    "two-dimensional": np.array([[0, 1], [1, 2]], np.int32),
    "empty": np.array([], np.int32),
}


@pytest.mark.parametrize("name", BAD_OFFSETS)
def test_offsets_that_would_read_outside_the_data_are_refused(name: str) -> None:
    data, offsets = b"abcdef", BAD_OFFSETS[name]
    rows = max(0, len(offsets) - 1)
    with pytest.raises(ValueError):
        batch_sha256.reference_hash_slices(data, offsets)
    for implementation in (_batch_sha256.hash_rows, batch_sha256.reference_hash_rows):
        with pytest.raises(ValueError):
            implementation(rows, [(memoryview(data), offsets)])


def test_tree_root_refuses_a_ragged_level() -> None:
    for implementation in (_batch_sha256.tree_root, batch_sha256.reference_tree_root):
        with pytest.raises(ValueError):
            implementation(b"\x00" * 33)


def test_hashing_releases_the_gil() -> None:
    # The batcher hashes on its own thread while the event loop serves requests: a Python
    # thread must keep running while one large call is in C. A counting thread's rate during
    # the call is held to its rate while the main thread merely sleeps, in the same minute; a
    # call that kept the GIL would leave it one switch interval (5 ms) of a ~0.3 s call.
    data = np.random.default_rng(1).bytes(64 << 20)
    offsets = np.arange(0, len(data) + 1, 64, dtype=np.int64)  # ~1 M messages
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    def rate_while(action: Callable[[], object]) -> float:
        before, started = ticks, time.perf_counter()
        action()
        return (ticks - before) / (time.perf_counter() - started)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        pieces: list[tuple[memoryview, int | np.ndarray]] = [(memoryview(data), offsets)]
        hashing = rate_while(lambda: _batch_sha256.hash_rows(len(offsets) - 1, pieces))
        sleeping = rate_while(lambda: time.sleep(0.3))
    finally:
        done.set()
        counter.join()
    assert hashing > 0.2 * sleeping, (hashing, sleeping)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=50), min_size=1, max_size=70))
def test_leaf_hashes_and_tree_levels_are_merkles(messages: list[bytes]) -> None:
    leaves = batch_sha256.leaf_hashes(messages)
    assert leaves == b"".join(merkle.leaf_hash(m) for m in messages)
    levels = batch_sha256.tree_levels(leaves)
    assert levels[0] == leaves and len(levels[-1]) == merkle.HASH_SIZE
    as_list = [leaves[at : at + 32] for at in range(0, len(leaves), 32)]
    assert levels[-1] == merkle.root(as_list)
    # Each level is the one below paired, an odd last node carried up.
    for below, above in itertools.pairwise(levels):
        nodes = [below[at : at + 32] for at in range(0, len(below), 32)]
        expected = [merkle.node_hash(nodes[i], nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]
        expected += [nodes[-1]] if len(nodes) % 2 else []
        assert above == b"".join(expected)


def test_tree_levels_needs_a_leaf() -> None:
    with pytest.raises(ValueError):
        batch_sha256.tree_levels(b"")

"""RFC 6962 / RFC 9162 Merkle trees over SHA-256: roots, proofs, verification, an append-only log.

Leaves and interior nodes are hashed with distinct one-byte prefixes (0x00 and 0x01) so that
a leaf can never be passed off as an interior node (second-preimage resistance). The tree over
n leaves splits at the largest power of two below n, so it is a sequence of perfect subtrees of
decreasing size: that is what makes appends and roots O(log n) in :class:`MerkleLog`.

Verification follows RFC 9162 §2.1.3.2 and §2.1.4.2; the edge cases (equal sizes, the empty
tree) follow the transparency-dev/merkle reference implementation (``proof/verify.go``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

# Computes MTH(D[start:end]) for a range that the RFC 6962 recursion produces.
SubtreeRoot = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A Merkle inclusion or consistency proof does not verify, or is malformed."""


def leaf_hash(data: bytes) -> bytes:
    """The hash of a leaf: SHA-256(0x00 ‖ data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


# --- Tree hashes and proofs over a list of leaf hashes ---------------------------------------


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) per RFC 6962 §2.1, in O(n); the empty tree hashes to SHA-256("").

    Level by level: pair the nodes left to right and carry an odd last node up unchanged. That
    is the RFC's tree (it splits at the largest power of two below n, so the left part is
    always perfect and only the rightmost node of a level can lack a sibling), and each level's
    ``0x01 ‖ left ‖ right`` messages are laid out in one buffer instead of built per node."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level = b"".join(leaf_hashes)
    if len(level) != HASH_SIZE * len(leaf_hashes):
        raise ValueError(f"leaf hashes are {HASH_SIZE} bytes each")
    sha256 = hashlib.sha256
    while len(level) > HASH_SIZE:
        pairs, odd = divmod(len(level) // HASH_SIZE, 2)
        width = 1 + 2 * HASH_SIZE
        messages = np.empty((pairs, width), np.uint8)
        messages[:, 0] = _NODE_PREFIX[0]
        messages[:, 1:] = np.frombuffer(level, np.uint8, pairs * 2 * HASH_SIZE).reshape(pairs, -1)
        view = memoryview(messages.tobytes())
        parents = [sha256(view[at : at + width]).digest() for at in range(0, len(view), width)]
        if odd:
            parents.append(level[-HASH_SIZE:])
        level = b"".join(parents)
    return level


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) per RFC 6962 §2.1.1: sibling hashes from the leaf up to the root."""
    size = len(leaf_hashes)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    return _path(lambda start, end: _range_root(leaf_hashes, start, end), index, size)


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) per RFC 6962 §2.1.2; empty when old_size == n."""
    return _consistency(
        lambda start, end: _range_root(leaf_hashes, start, end), old_size, len(leaf_hashes)
    )


def _split(n: int) -> int:
    """The largest power of two strictly below n (n ≥ 2): where RFC 6962 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


def _fold(right_edge: Sequence[bytes]) -> bytes:
    """Hash perfect subtree roots, ordered left (largest) to right, into the tree's root."""
    result = right_edge[-1]
    for left in reversed(right_edge[:-1]):
        result = node_hash(left, result)
    return result


def _range_root(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    """MTH(D[start:end]) in O(end - start), with a stack of pending perfect subtrees."""
    if start == end:
        return EMPTY_ROOT
    stack: list[bytes] = []
    for count, position in enumerate(range(start, end), start=1):
        node = leaf_hashes[position]
        # Each trailing zero bit of the leaf count completes one more perfect subtree.
        pending = count
        while pending & 1 == 0:
            node = node_hash(stack.pop(), node)
            pending >>= 1
        stack.append(node)
    return _fold(stack)


def _path(subtree_root: SubtreeRoot, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]), walking down from the root (the RFC recurses; a loop is flat)."""
    start, end = 0, size
    siblings: list[bytes] = []
    while end - start > 1:
        middle = start + _split(end - start)
        if index < middle:
            siblings.append(subtree_root(middle, end))
            end = middle
        else:
            siblings.append(subtree_root(start, middle))
            start = middle
    siblings.reverse()  # the proof lists siblings bottom-up
    return siblings


def _consistency(subtree_root: SubtreeRoot, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) = SUBPROOF(old_size, D[0:new_size], true), as a loop."""
    if old_size <= 0:
        raise ValueError("a consistency proof from the empty tree is meaningless")
    if old_size > new_size:
        raise ValueError(f"old size {old_size} is larger than new size {new_size}")
    start, end, remaining = 0, new_size, old_size
    from_original_root = True  # SUBPROOF's flag b: the old root is known to the verifier
    hashes: list[bytes] = []
    while remaining != end - start:
        split = _split(end - start)
        if remaining <= split:
            hashes.append(subtree_root(start + split, end))
            end = start + split
        else:
            hashes.append(subtree_root(start, start + split))
            start += split
            remaining -= split
            from_original_root = False
    if not from_original_root:
        hashes.append(subtree_root(start, end))
    hashes.reverse()  # the RFC appends on the way back up the recursion
    return hashes


# --- Verification (RFC 9162 §2.1.3.2 and §2.1.4.2) -------------------------------------------


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    Raises :class:`ProofError` on any failure; returns None when the proof verifies.
    """
    if index < 0 or tree_size < 0:
        raise ProofError(f"leaf index {index} and tree size {tree_size} must not be negative")
    if index >= tree_size:
        raise ProofError(f"leaf index {index} is beyond a tree of size {tree_size}")
    _require_hash(leaf_hash, "leaf hash")
    _require_hash(root, "root hash")
    _require_proof_hashes(proof)
    want = _inclusion_proof_length(index, tree_size)
    if len(proof) != want:
        raise ProofError(
            f"inclusion proof for leaf {index} of {tree_size} has {len(proof)} hashes, want {want}"
        )
    calculated = _root_from_inclusion_proof(leaf_hash, index, tree_size, proof)
    if calculated != root:
        raise ProofError(
            f"inclusion proof for leaf {index} of {tree_size} leads to root "
            f"{calculated.hex()}, not the expected {root.hex()}"
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of ``size2`` with ``root2`` extends the one of ``size1`` with ``root1``.

    A proof from the empty tree is rejected as meaningless (as the reference implementation
    does): every tree extends it, so such a "proof" would only lull a caller into trusting a
    root that was never checked. Raises :class:`ProofError`; returns None when it verifies.
    """
    if size1 < 0 or size2 < 0:
        raise ProofError(f"tree sizes {size1} and {size2} must not be negative")
    if size2 < size1:
        raise ProofError(f"size1 {size1} is larger than size2 {size2}: a log cannot shrink")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree (size1 = 0) is meaningless")
    _require_proof_hashes(proof)
    if size1 == size2:
        _verify_same_size(size1, proof, root1, root2)
        return
    if not proof:
        raise ProofError(f"empty consistency proof between different sizes {size1} < {size2}")
    _require_hash(root1, "root1")
    _require_hash(root2, "root2")
    want = _consistency_proof_length(size1, size2)
    if len(proof) != want:
        raise ProofError(
            f"consistency proof from {size1} to {size2} has {len(proof)} hashes, want {want}"
        )
    calculated1, calculated2 = _roots_from_consistency_proof(size1, size2, proof, root1)
    if calculated1 != root1:
        raise ProofError(
            f"consistency proof leads to root1 {calculated1.hex()}, not {root1.hex()} "
            f"(size {size1})"
        )
    if calculated2 != root2:
        raise ProofError(
            f"consistency proof leads to root2 {calculated2.hex()}, not {root2.hex()} "
            f"(size {size2})"
        )


def _verify_same_size(size: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    # Nothing is hashed here, so only equality matters (the reference does not check lengths).
    if proof:
        raise ProofError(f"sizes are equal ({size}) but the consistency proof is not empty")
    if root1 != root2:
        raise ProofError(
            f"sizes are equal ({size}) but the roots differ: {root1.hex()} != {root2.hex()}"
        )


def _require_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def _require_proof_hashes(proof: Sequence[bytes]) -> None:
    for position, element in enumerate(proof):
        _require_hash(element, f"proof element {position}")


def _inclusion_proof_length(index: int, size: int) -> int:
    # Below the level where the paths to `index` and to the last leaf diverge, every level
    # has a sibling ("inner"); above it, only the levels where `index` is a right child do.
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner + border


def _consistency_proof_length(size1: int, size2: int) -> int:
    # The proof is the suffix of the inclusion proof of leaf size1 - 1 above the largest
    # perfect subtree that ends at size1, plus that subtree's root unless it is the whole
    # old tree (when size1 is a power of two the verifier already holds it as root1).
    shift = (size1 & -size1).bit_length() - 1
    seed_in_proof = 0 if size1 == 1 << shift else 1
    return seed_in_proof + _inclusion_proof_length(size1 - 1, size2) - shift


def _root_from_inclusion_proof(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes]
) -> bytes:
    """RFC 9162 §2.1.3.2 steps 2 to 5 (the proof length was checked beforehand)."""
    fn, sn, result = index, tree_size - 1, leaf_hash
    for sibling in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            # On the right border a node may have no sibling: skip levels until it has one.
            while fn & 1 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            result = node_hash(result, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    return result


def _roots_from_consistency_proof(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes
) -> tuple[bytes, bytes]:
    """RFC 9162 §2.1.4.2 steps 2 to 7: the old and new roots that the proof implies."""
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # a power of two: the old tree is itself the seed subtree
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    old_root = new_root = path[0]
    for element in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            old_root = node_hash(element, old_root)
            new_root = node_hash(element, new_root)
            while fn & 1 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            new_root = node_hash(new_root, element)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the root")
    return old_root, new_root


# --- The append-only log ---------------------------------------------------------------------


class MerkleLog:
    """An append-only, in-memory RFC 6962 tree of leaf hashes.

    ``_levels[h]`` holds, back to back in one bytearray, the roots of every complete perfect
    subtree of 2**h leaves, left to right (level 0 is the leaves). That is about 64 bytes per
    leaf with no per-hash object overhead, and it makes the root of any tree size, and every
    hash a proof needs, a fold of at most log2(n) stored nodes: the right edge of a tree of
    size n is the stored subtree for each set bit of n (its compact range).
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        for leaf in leaf_hashes:
            self.append(leaf)

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Add a leaf hash (not leaf data: see :func:`leaf_hash`); returns its index.

        O(1) amortized, O(log n) worst case: completing a perfect subtree stores its root.
        """
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(leaf_hash)}")
        index = self._size
        self._levels[0] += leaf_hash
        self._size += 1
        node, level, position = bytes(leaf_hash), 0, index
        while position & 1:  # a right child: its parent subtree is now complete
            node = node_hash(self._node(level, position - 1), node)
            level, position = level + 1, position >> 1
            if level == len(self._levels):
                self._levels.append(bytearray())
            self._levels[level] += node
        return index

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        if not 0 <= index < self._size:
            raise ValueError(f"leaf index {index} is outside a log of size {self._size}")
        return self._node(0, index)

    def root(self) -> bytes:
        """The root of the whole log, in O(log n)."""
        return self.root_at(self._size)

    def root_at(self, size: int) -> bytes:
        """The root the log had when it held ``size`` leaves, in O(log n)."""
        self._require_size(size)
        return self._subtree_root(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The proof that leaf ``index`` is in the tree of ``size`` (default: the whole log)."""
        size = self._size if size is None else size
        self._require_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is outside a tree of size {size}")
        return _path(self._subtree_root, index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The proof that the tree of ``new_size`` (default: the whole log) extends ``old_size``."""
        new_size = self._size if new_size is None else new_size
        self._require_size(new_size)
        return _consistency(self._subtree_root, old_size, new_size)

    def _require_size(self, size: int) -> None:
        if not 0 <= size <= self._size:
            raise ValueError(f"tree size {size} is outside 0..{self._size}")

    def _node(self, level: int, position: int) -> bytes:
        offset = position * HASH_SIZE
        return bytes(self._levels[level][offset : offset + HASH_SIZE])

    def _subtree_root(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a range the RFC recursion produces (so 0 ≤ start < end).

        Such a range starts at a multiple of a power of two at least as large as itself, so
        it is a sequence of stored, aligned perfect subtrees of decreasing size.
        """
        right_edge: list[bytes] = []
        while start < end:
            width = end - start
            chunk = width if width & (width - 1) == 0 else _split(width)
            level = chunk.bit_length() - 1
            right_edge.append(self._node(level, start >> level))
            start += chunk
        return _fold(right_edge)

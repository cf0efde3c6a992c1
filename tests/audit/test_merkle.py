"""RFC 6962 Merkle trees: the transparency-dev vectors, a recursive reference, properties."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from render_gateway.audit import merkle
from render_gateway.audit.merkle import (
    EMPTY_ROOT,
    MerkleLog,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# --- The RFC 6962 test vectors (transparency-dev/merkle testdata) ----------------------------


def _candidates() -> list[Path]:
    """Where the shared test data may be: $RENDER_SHARED_TESTDATA, else the repository's sibling
    ``shared/testdata`` (the workspace layout), else the workspace's absolute path."""
    override = os.environ.get("RENDER_SHARED_TESTDATA")
    if override:
        return [Path(override)]
    sibling = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
    return [sibling, Path("/work/shared/testdata")]


def _vectors_dir() -> Path:
    for testdata in _candidates():
        if (testdata / "rfc6962" / "inclusion").is_dir():
            return testdata / "rfc6962"
    return _candidates()[0] / "rfc6962"


VECTORS = _vectors_dir()
MISSING = (
    "RFC 6962 test vectors not found: looked in "
    + ", ".join(str(c / "rfc6962") for c in _candidates())
    + " (set RENDER_SHARED_TESTDATA to the shared testdata folder)"
)


def _vector_files(kind: str) -> list[Path]:
    folder = VECTORS / kind
    return sorted(folder.rglob("*.json")) if folder.is_dir() else []


def _cases(kind: str) -> list[Any]:
    # A missing folder becomes one failing case, so a broken checkout cannot pass by skipping.
    files = _vector_files(kind)
    if not files:
        return [pytest.param(None, id=f"{kind}-vectors-missing")]
    return [
        pytest.param(path, id=path.relative_to(VECTORS).with_suffix("").as_posix())
        for path in files
    ]


def _load(path: Path | None) -> dict[str, Any]:
    if path is None:
        pytest.fail(MISSING)
    case: dict[str, Any] = json.loads(path.read_text())
    return case


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _proof(case: dict[str, Any]) -> list[bytes]:
    return [_b64(item) for item in case["proof"] or []]  # the vectors write an empty proof as null


def test_vectors_are_present_with_both_outcomes() -> None:
    for kind in ("inclusion", "consistency"):
        cases = [json.loads(path.read_text()) for path in _vector_files(kind)]
        assert cases, MISSING
        assert any(not case["wantErr"] for case in cases), f"no {kind} happy path"
        assert sum(case["wantErr"] for case in cases) >= 50, f"too few {kind} error cases"


@pytest.mark.parametrize("path", _cases("inclusion"))
def test_inclusion_vector(path: Path | None) -> None:
    case = _load(path)
    args = (
        _b64(case["leafHash"]),  # already a leaf hash, not leaf data
        case["leafIdx"],
        case["treeSize"],
        _proof(case),
        _b64(case["root"]),
    )
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", _cases("consistency"))
def test_consistency_vector(path: Path | None) -> None:
    case = _load(path)
    args = (case["size1"], case["size2"], _proof(case), _b64(case["root1"]), _b64(case["root2"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


# The leaves behind the numbered vector folders: the classic RFC 6962 test tree.
RFC_LEAVES = [
    bytes.fromhex(data)
    for data in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
RFC_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
RFC_LEAF_HASHES = [leaf_hash(data) for data in RFC_LEAVES]


def test_rfc_test_tree_roots() -> None:
    log = MerkleLog()
    for size, (leaf, want) in enumerate(zip(RFC_LEAF_HASHES, RFC_ROOTS, strict=True), start=1):
        log.append(leaf)
        assert root(RFC_LEAF_HASHES[:size]).hex() == want
        assert log.root().hex() == want


def _happy_numbered_cases(kind: str) -> list[Any]:
    paths = [path for path in _vector_files(kind) if path.name == "happy-path.json"]
    return [pytest.param(path, id=path.relative_to(VECTORS).as_posix()) for path in paths] or [
        pytest.param(None, id=f"{kind}-vectors-missing")
    ]


@pytest.mark.parametrize("path", _happy_numbered_cases("inclusion"))
def test_generated_inclusion_proofs_match_vectors(path: Path | None) -> None:
    case = _load(path)
    leaves = RFC_LEAF_HASHES[: case["treeSize"]]
    assert leaves[case["leafIdx"]] == _b64(case["leafHash"])
    assert inclusion_proof(leaves, case["leafIdx"]) == _proof(case)
    assert MerkleLog(leaves).inclusion_proof(case["leafIdx"]) == _proof(case)
    assert root(leaves) == _b64(case["root"])


@pytest.mark.parametrize("path", _happy_numbered_cases("consistency"))
def test_generated_consistency_proofs_match_vectors(path: Path | None) -> None:
    case = _load(path)
    log = MerkleLog(RFC_LEAF_HASHES)
    assert consistency_proof(RFC_LEAF_HASHES[: case["size2"]], case["size1"]) == _proof(case)
    assert log.consistency_proof(case["size1"], case["size2"]) == _proof(case)
    assert log.root_at(case["size1"]) == _b64(case["root1"])
    assert log.root_at(case["size2"]) == _b64(case["root2"])


# --- Hashing ---------------------------------------------------------------------------------


def test_empty_tree_root_is_the_hash_of_nothing() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root([]) == EMPTY_ROOT
    assert MerkleLog().root() == EMPTY_ROOT
    assert MerkleLog().root_at(0) == EMPTY_ROOT


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    left, right = leaf_hash(b"left"), leaf_hash(b"right")
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert leaf_hash(left + right) != node_hash(left, right)


def test_second_preimage_leaf_posing_as_a_node_fails() -> None:
    # Leaf data equal to the root's two children would hash to the root without the prefixes.
    leaves = [leaf_hash(bytes([i])) for i in range(4)]
    children = node_hash(leaves[0], leaves[1]), node_hash(leaves[2], leaves[3])
    tree_root = root(leaves)
    assert hashlib.sha256(children[0] + children[1]).digest() != tree_root
    forged = leaf_hash(children[0] + children[1])
    with pytest.raises(ProofError):
        verify_inclusion(forged, 0, 1, [], tree_root)
    forged_child = leaf_hash(leaves[0] + leaves[1])
    with pytest.raises(ProofError):
        verify_inclusion(forged_child, 0, 2, [children[1]], tree_root)


def test_node_posing_as_a_leaf_fails_at_the_true_tree_size() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(4)]
    tree_root = root(leaves)
    inner = node_hash(leaves[0], leaves[1])
    for index in range(4):
        with pytest.raises(ProofError):
            verify_inclusion(inner, index, 4, inclusion_proof(leaves, index), tree_root)
    with pytest.raises(ProofError):
        verify_inclusion(inner, 0, 4, [node_hash(leaves[2], leaves[3])], tree_root)


# --- Against a straightforward recursive reference (RFC 6962 §2.1 verbatim) ------------------


def _ref_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _ref_root(hashes: Sequence[bytes]) -> bytes:
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = _ref_split(len(hashes))
    return node_hash(_ref_root(hashes[:k]), _ref_root(hashes[k:]))


def _ref_path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    if len(hashes) == 1:
        return []
    k = _ref_split(len(hashes))
    if m < k:
        return [*_ref_path(m, hashes[:k]), _ref_root(hashes[k:])]
    return [*_ref_path(m - k, hashes[k:]), _ref_root(hashes[:k])]


def _ref_subproof(m: int, hashes: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if complete else [_ref_root(hashes)]
    k = _ref_split(n)
    if m <= k:
        return [*_ref_subproof(m, hashes[:k], complete), _ref_root(hashes[k:])]
    return [*_ref_subproof(m - k, hashes[k:], False), _ref_root(hashes[:k])]


def _hashes(count: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(count)]


def test_root_matches_the_recursive_reference_for_sizes_0_to_70() -> None:
    hashes = _hashes(70)
    for size in range(71):
        assert root(hashes[:size]) == _ref_root(hashes[:size]), size


def test_proofs_match_the_recursive_reference() -> None:
    hashes = _hashes(40)
    for size in range(1, 41):
        tree = hashes[:size]
        for index in range(size):
            assert inclusion_proof(tree, index) == _ref_path(index, tree), (index, size)
        for old_size in range(1, size + 1):
            assert consistency_proof(tree, old_size) == _ref_subproof(old_size, tree, True)


def test_merkle_log_agrees_with_the_list_functions_for_sizes_1_to_64() -> None:
    hashes = _hashes(64)
    log = MerkleLog()
    for size in range(1, 65):
        assert log.append(hashes[size - 1]) == size - 1
        tree = hashes[:size]
        tree_root = root(tree)
        assert log.size == size
        assert log.root() == tree_root
        for index in range(size):
            proof = log.inclusion_proof(index)
            assert proof == inclusion_proof(tree, index)
            verify_inclusion(hashes[index], index, size, proof, tree_root)
        for old_size in range(1, size + 1):
            proof = log.consistency_proof(old_size)
            assert proof == consistency_proof(tree, old_size)
            verify_consistency(old_size, size, proof, root(hashes[:old_size]), tree_root)


def test_merkle_log_answers_for_past_sizes() -> None:
    hashes = _hashes(64)
    log = MerkleLog(hashes)
    for size in range(65):
        assert log.root_at(size) == root(hashes[:size])
    for size in range(1, 65):
        for index in range(size):
            assert log.inclusion_proof(index, size) == inclusion_proof(hashes[:size], index)
        for old_size in range(1, size + 1):
            want = consistency_proof(hashes[:size], old_size)
            assert log.consistency_proof(old_size, size) == want
    assert [log.leaf(i) for i in range(64)] == hashes


def test_merkle_log_root_and_append_are_logarithmic(monkeypatch: pytest.MonkeyPatch) -> None:
    log = MerkleLog(_hashes(5000))
    calls: list[None] = []
    real_node_hash = merkle.node_hash

    def counting(left: bytes, right: bytes) -> bytes:
        calls.append(None)
        return real_node_hash(left, right)

    monkeypatch.setattr(merkle, "node_hash", counting)
    log.root()
    assert len(calls) < 13  # one per stored subtree on the right edge, not one per leaf
    calls.clear()
    log.append(leaf_hash(b"next"))
    log.root_at(3001)
    log.inclusion_proof(1234)
    assert len(calls) < 13 + 13 + 13 * 13


# --- Argument errors -------------------------------------------------------------------------


def test_generators_reject_bad_arguments() -> None:
    hashes = _hashes(5)
    log = MerkleLog(hashes)
    for call in (
        lambda: inclusion_proof(hashes, 5),
        lambda: inclusion_proof(hashes, -1),
        lambda: inclusion_proof([], 0),
        lambda: consistency_proof(hashes, 0),
        lambda: consistency_proof(hashes, 6),
        lambda: log.inclusion_proof(3, 3),
        lambda: log.inclusion_proof(0, 6),
        lambda: log.consistency_proof(0),
        lambda: log.consistency_proof(4, 3),
        lambda: log.consistency_proof(1, 6),
        lambda: log.root_at(6),
        lambda: log.root_at(-1),
        lambda: log.leaf(5),
        lambda: log.append(b"short"),
    ):
        with pytest.raises(ValueError):
            call()
    assert consistency_proof(hashes, 5) == []
    assert log.consistency_proof(3, 3) == []
    assert log.size == 5


def _raises(message: str, call: Callable[[], None]) -> None:
    with pytest.raises(ProofError, match=message):
        call()


def test_verification_error_messages() -> None:
    hashes = _hashes(5)
    good = inclusion_proof(hashes, 2)
    tree_root = root(hashes)
    _raises("beyond a tree of size 0", lambda: verify_inclusion(hashes[0], 0, 0, [], EMPTY_ROOT))
    _raises("beyond", lambda: verify_inclusion(hashes[0], 5, 5, good, tree_root))
    _raises("negative", lambda: verify_inclusion(hashes[0], -1, 5, good, tree_root))
    _raises(
        "proof element 1 is 31 bytes",
        lambda: verify_inclusion(hashes[2], 2, 5, [good[0], good[1][:31], good[2]], tree_root),
    )
    _raises("has 2 hashes, want 3", lambda: verify_inclusion(hashes[2], 2, 5, good[:2], tree_root))
    _raises("leads to root", lambda: verify_inclusion(hashes[3], 2, 5, good, tree_root))
    _raises("leaf hash is 3 bytes", lambda: verify_inclusion(b"abc", 2, 5, good, tree_root))
    old_root = root(hashes[:3])
    proof = consistency_proof(hashes, 3)
    _raises("cannot shrink", lambda: verify_consistency(5, 3, proof, tree_root, old_root))
    _raises("empty tree", lambda: verify_consistency(0, 5, [], EMPTY_ROOT, tree_root))
    _raises("empty tree", lambda: verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT))
    _raises("not empty", lambda: verify_consistency(3, 3, proof, old_root, old_root))
    _raises("roots differ", lambda: verify_consistency(3, 3, [], old_root, tree_root))
    _raises("empty consistency proof", lambda: verify_consistency(3, 5, [], old_root, tree_root))
    _raises("want", lambda: verify_consistency(3, 5, [*proof, proof[0]], old_root, tree_root))
    _raises("root1", lambda: verify_consistency(3, 5, proof, tree_root, tree_root))
    _raises("root2", lambda: verify_consistency(3, 5, proof, old_root, old_root))
    verify_consistency(3, 3, [], old_root, old_root)
    assert issubclass(ProofError, ValueError)


# --- Properties ------------------------------------------------------------------------------

_sizes_and_index = st.integers(min_value=1, max_value=300).flatmap(
    lambda size: st.tuples(st.just(size), st.integers(min_value=0, max_value=size - 1))
)


def _flip_bit(proof: list[bytes], element: int, bit: int) -> list[bytes]:
    tampered = bytearray(proof[element])
    tampered[bit // 8] ^= 1 << (bit % 8)
    return [*proof[:element], bytes(tampered), *proof[element + 1 :]]


@settings(max_examples=150, deadline=None)
@given(_sizes_and_index, st.data())
def test_inclusion_proofs_verify_and_tampering_fails(
    size_and_index: tuple[int, int], data: st.DataObject
) -> None:
    size, index = size_and_index
    hashes = _hashes(size)
    log = MerkleLog(hashes)
    proof = log.inclusion_proof(index)
    verify_inclusion(hashes[index], index, size, proof, log.root())
    if proof:
        element = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        with pytest.raises(ProofError):
            verify_inclusion(hashes[index], index, size, _flip_bit(proof, element, bit), log.root())
    if size > 1:  # each leaf has its own path: another index or leaf must not fit the proof
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
        with pytest.raises(ProofError):
            verify_inclusion(hashes[index], other, size, proof, log.root())
        with pytest.raises(ProofError):
            verify_inclusion(hashes[other], index, size, proof, log.root())


@settings(max_examples=150, deadline=None)
@given(_sizes_and_index, st.data())
def test_consistency_proofs_verify_and_tampering_fails(
    size_and_index: tuple[int, int], data: st.DataObject
) -> None:
    size, last_old_index = size_and_index
    old_size = last_old_index + 1
    log = MerkleLog(_hashes(size))
    old_root, new_root = log.root_at(old_size), log.root()
    proof = log.consistency_proof(old_size)
    verify_consistency(old_size, size, proof, old_root, new_root)
    if proof:
        element = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        with pytest.raises(ProofError):
            verify_consistency(old_size, size, _flip_bit(proof, element, bit), old_root, new_root)
        with pytest.raises(ProofError):
            verify_consistency(old_size, size, proof, new_root, old_root)
        with pytest.raises(ProofError):
            verify_consistency(old_size, size, proof[:-1], old_root, new_root)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=8), max_size=100))
def test_incremental_roots_match_the_batch_root(leaves: list[bytes]) -> None:
    hashes = [leaf_hash(data) for data in leaves]
    log = MerkleLog()
    for leaf in hashes:
        log.append(leaf)
    assert log.root() == root(hashes) == _ref_root(hashes)
    for size in range(len(hashes) + 1):
        assert log.root_at(size) == root(hashes[:size])

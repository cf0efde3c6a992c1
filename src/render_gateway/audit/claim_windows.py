"""Checking many window-signed claims (``Ed25519-window``) fast, for offline verification.

A window's statement is verified once per verification run, and the inclusion proofs of its
claims share their upper levels: once one claim's proof has been verified to the signed root,
every node it passed through is known to lead there with the rest of that proof. A later claim
of the same window hashes its way up only until it meets such a node with the same hash, and
then must present exactly the rest of the path that node was verified with. That is the same
decision the full RFC 9162 check makes (the check from a node on depends only on the node's
position, its hash and the remaining path), at about two SHA-256s per claim instead of
log2(size) — the per-record cost the brief's 50k records/s needs on two slow cores.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from render_gateway.audit import batch_sha256
from render_gateway.audit.merkle import HASH_SIZE, leaf_hash, node_hash
from render_gateway.usage_claim import (
    WINDOW_ALGORITHM,
    ClaimWindow,
    InvalidClaim,
    SignedClaim,
    verify_window_claim,
    window_statement,
)

# A node of the window's tree as the RFC 9162 walk meets it: (level, index at that level).
_Position = tuple[int, int]
# A node key as rows spell it (base64) → the key, its raw bytes and its key id.
NodeKeyOf = Callable[[str], tuple[Ed25519PublicKey, bytes, str]]
# ClaimWindow.to_text's canonical spelling: {"index":…,"path":[…],"root":"…","size":…}
_INDEX_MARK = '{"index":'
_INDEX_MARK_LENGTH = len(_INDEX_MARK)
_ROOT_MARK = ',"root":"'


@dataclass
class _Window:
    """A window whose statement verified: the nodes known to lead to its root, each with the
    hash it has and the rest of the path (hex) that was verified from it."""

    root: bytes
    known: dict[_Position, tuple[bytes, list[str]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClaimColumns:
    """What a claim check reads of a batch's rows, a Python list per column in row order
    (``window`` all None for version-1 batches, which have no ``claim_window``): built from the
    Arrow columns at once, with no mapping per row."""

    request_id: list[Any]
    gpu_seconds: list[Any]
    payload: list[Any]
    signature: list[Any]
    public_key: list[Any]
    key_id: list[Any]
    error: list[Any]
    window: list[Any]

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """Each row's fields, in CLAIM_COLUMN_NAMES' order."""
        return zip(self.request_id, self.gpu_seconds, self.payload, self.signature,
                   self.public_key, self.key_id, self.error, self.window, strict=True)  # fmt: skip

    @classmethod
    def of_rows(cls, rows: Sequence[Mapping[str, Any]]) -> ClaimColumns:
        """From rows as mappings (attestation rows' column names)."""
        return cls(*([row.get(name) for row in rows] for name in CLAIM_COLUMN_NAMES))


# ClaimColumns' fields as the attestation rows name them, in the same order.
CLAIM_COLUMN_NAMES = ("request_id", "gpu_seconds", "claim_payload", "claim_signature",
                      "node_public_key", "node_key_id", "claim_error", "claim_window")  # fmt: skip


class WindowClaims:
    """The windows met so far in one verification run (the most recent ``capacity`` of them:
    a window's claims sit close together in the log, and one met again after that many others
    only costs its statement's verification once more)."""

    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        self._windows: OrderedDict[tuple[bytes, int, str, str], _Window] = OrderedDict()
        self.statements_verified = 0  # Ed25519 verifications done (one per distinct window)

    def prove_batch(self, columns: ClaimColumns, node_key: NodeKeyOf) -> set[int]:
        """The positions of the rows whose claims are proven at once, as members of a window
        the batch holds whole: its payloads' root, rebuilt in index order, is the signed root,
        and each row's ``claim_window`` is exactly the canonical text of its place (so its path
        is the true path). Every other row (a window split across batches, or anything that
        does not match) is left to :meth:`check`, which decides alone — this pass only ever
        spares work, never rejects. ``node_key``: base64 key → (key, raw bytes, key id),
        raising ValueError for a bad key."""
        proven: set[int] = set()
        # (node key, key id, signature, the window text's tail) → index → (payload, row, text)
        groups: dict[tuple[str, str, str, str], dict[int, tuple[str, int, str] | None]] = {}
        rows = zip(columns.window, columns.payload, columns.error, columns.public_key,
                   columns.key_id, columns.signature, strict=True)  # fmt: skip
        for position, (text, payload, error, public, key_id, signature) in enumerate(rows):
            if text is None or payload is None or error is not None:
                continue
            tail = text.rfind(_ROOT_MARK)
            comma = text.find(",", _INDEX_MARK_LENGTH)
            if tail < 0 or comma < 0 or not text.startswith(_INDEX_MARK):
                continue
            members = groups.setdefault((public, key_id, signature, text[tail:]), {})
            index = text[_INDEX_MARK_LENGTH:comma]
            if index.isdigit() and len(index) < 8:  # a duplicate index spoils the window
                at = int(index)
                members[at] = (payload, position, text) if at not in members else None
        for (public, key_id, signature, tail), members in groups.items():
            self._prove_window(public, key_id, signature, tail, members, node_key, proven)
        return proven

    def _prove_window(
        self,
        public: str | None,
        key_id: str,
        signature: str | None,
        tail: str,
        members: dict[int, tuple[str, int, str] | None],
        node_key: NodeKeyOf,
        proven: set[int],
    ) -> None:
        try:
            place = orjson.loads("{" + tail[1:])
            size, root_hex = place["size"], place["root"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if type(size) is not int or type(root_hex) is not str or len(members) != size:
            return
        if public is None or signature is None:
            return
        rows = [members.get(index) for index in range(size)]
        if None in rows:  # an index missing (or out of range), or one given twice
            return
        whole = cast(list[tuple[str, int, str]], rows)
        # Each level in one batch_sha256 call rather than a hashlib call per node.
        levels = batch_sha256.tree_levels(
            batch_sha256.leaf_hashes([payload.encode() for payload, _, _ in whole])
        )
        window_root = levels[-1]
        if window_root.hex() != root_hex:
            return
        try:
            key, raw, real_id = node_key(public)
        except ValueError:
            return
        if real_id != key_id:
            return
        cache_key = (raw, size, root_hex, signature)
        if cache_key not in self._windows:
            try:
                statement_signature = base64.b64decode(signature, validate=True)
                key.verify(statement_signature, window_statement(key_id, size, window_root))
            except (binascii.Error, ValueError, InvalidSignature):
                return
            self.statements_verified += 1
            self._windows[cache_key] = _Window(window_root)
            if len(self._windows) > self._capacity:
                self._windows.popitem(last=False)
        # Each node as it stands in a canonical path: quoted hex (ClaimWindow.to_text's form,
        # built by hand: one format per row, not a dict and a sorted dump).
        quoted = [
            [f'"{level[at : at + HASH_SIZE].hex()}"' for at in range(0, len(level), HASH_SIZE)]
            for level in levels[:-1]
        ]
        ending = f'],"root":"{root_hex}","size":{size}}}'
        for index, (_, position, text) in enumerate(whole):
            path, at = [], index
            for level in quoted:
                if at ^ 1 < len(level):
                    path.append(level[at ^ 1])
                at >>= 1
            if text == f'{{"index":{index},"path":[{",".join(path)}{ending}':
                proven.add(position)

    def check(
        self,
        public_key: Ed25519PublicKey,
        raw_key: bytes,
        key_id: str,
        payload: bytes,
        window_text: str,
        signature: str,
    ) -> None:
        """Raise InvalidClaim unless ``payload`` is in the window ``window_text`` (an attestation
        row's ``claim_window``) whose statement ``signature`` (base64) the key signed."""
        try:
            data = orjson.loads(window_text)
        except orjson.JSONDecodeError as exc:
            raise InvalidClaim(f"claim window is not JSON: {exc}") from exc
        index, size, root, path = _fields(data)
        key = (raw_key, size, root, signature)
        window = self._windows.get(key)
        if window is None:
            self._first_of(key, public_key, raw_key, key_id, payload, data, signature)
            return
        self._windows.move_to_end(key)
        if not 0 <= index < size:
            raise InvalidClaim(f"the claim is not in its window: leaf {index} of {size}")
        if not _member(window, leaf_hash(payload), index, size, path):
            raise InvalidClaim(
                f"the claim is not in its window: its inclusion proof for leaf {index} of "
                f"{size} does not lead to the signed root"
            )

    def _first_of(
        self,
        key: tuple[bytes, int, str, str],
        public_key: Ed25519PublicKey,
        raw_key: bytes,
        key_id: str,
        payload: bytes,
        data: dict[str, Any],
        signature: str,
    ) -> None:
        """A window not met yet: the claim's whole proof, then the statement's signature."""
        try:
            raw_signature = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidClaim(f"claim window signature is not base64: {exc}") from exc
        claim_window = ClaimWindow.from_json(data)
        signed = SignedClaim(payload, raw_signature, key_id, WINDOW_ALGORITHM, claim_window)
        verify_window_claim(signed, public_key, raw_key)
        self.statements_verified += 1
        window = _Window(claim_window.root)
        _member(window, leaf_hash(payload), claim_window.index, claim_window.size, data["path"])
        self._windows[key] = window
        if len(self._windows) > self._capacity:
            self._windows.popitem(last=False)


def _fields(data: Any) -> tuple[int, int, str, list[str]]:
    if type(data) is not dict or len(data) != 4:
        raise InvalidClaim("claim window must hold exactly index, path, root and size")
    try:
        index, size, root, path = data["index"], data["size"], data["root"], data["path"]
    except KeyError as exc:
        raise InvalidClaim("claim window must hold exactly index, path, root and size") from exc
    if type(index) is not int or type(size) is not int or type(root) is not str:
        raise InvalidClaim("claim window index and size must be integers, its root hex")
    if type(path) is not list:
        raise InvalidClaim("claim window path must be a list of hashes")
    return index, size, root, path


def _member(window: _Window, leaf: bytes, index: int, size: int, path: list[str]) -> bool:
    """RFC 9162 §2.1.3.2 for leaf ``index`` of ``size`` (0 ≤ index < size), stopping at the first
    node already verified with the same hash, where the rest of ``path`` must be the rest that
    node was verified with. When the proof holds, records every node it passed and each one's
    sibling (the path's own element there: a later claim under that sibling stops at once)."""
    known = window.known
    fn, sn, level, node = index, size - 1, 0, leaf
    passed: list[tuple[int, int, bytes, bytes, int]] = []
    position = 0
    for sibling_hex in path:
        hit = known.get((level, fn))
        if hit is not None and hit[0] == node:
            if path[position:] != hit[1]:
                return False
            break
        if sn == 0:
            return False  # longer than the path to the root
        try:
            sibling = bytes.fromhex(sibling_hex)
        except (TypeError, ValueError):
            return False
        if len(sibling) != HASH_SIZE or sibling.hex() != sibling_hex:
            return False  # not a hash in ClaimWindow.from_json's one spelling
        passed.append((level, fn, node, sibling, position))
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            # On the right border a node may have no sibling: skip levels until it has one.
            while fn & 1 == 0 and fn != 0:
                fn, sn, level = fn >> 1, sn >> 1, level + 1
        else:
            node = node_hash(node, sibling)
        fn, sn, level, position = fn >> 1, sn >> 1, level + 1, position + 1
    else:
        if sn != 0 or node != window.root:
            return False
    for at_level, at, hash_there, sibling, position in passed:
        known[(at_level, at)] = (hash_there, path[position:])
        # The sibling's proof from its place: this node, then the same rest — for a neighbour
        # on the same level only (a node on the right border without one was paired, levels
        # up, with a node whose place this entry does not name).
        last = (size - 1) >> at_level
        if at & 1 or at != last:
            known.setdefault(
                (at_level, at ^ 1), (sibling, [hash_there.hex(), *path[position + 1 :]])
            )
    return True

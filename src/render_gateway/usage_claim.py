"""The backend's signed usage claim: the "discharge proof" the audit trail stores.

The signature covers the exact payload bytes, and those bytes travel with it, so a verifier
never has to re-create a canonical encoding (floats, key order) to check a claim. The payload
itself is canonical anyway (sorted keys, no spaces, UTF-8) so that equal claims are equal bytes.

Two algorithms sign a claim. ``Ed25519``: the node key signs the payload itself (one signature,
and one verification, per claim). ``Ed25519-window``: the backend collects the claims that
finish within a short window and its node key signs one domain-separated statement over the
RFC 6962 root of their payloads (:func:`window_statement`); each claim travels with that
signature and its inclusion proof (:class:`ClaimWindow`). A claim is as bound to the key either
way (the key signed a root that commits to its exact bytes), but a verifier pays one Ed25519
verification per window instead of per claim (:class:`WindowStatements` remembers the
statements it has verified).
"""

from __future__ import annotations

import base64
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from render_gateway.audit.merkle import (
    HASH_SIZE,
    ProofError,
    leaf_hash,
    node_hash,
    verify_inclusion,
)
from render_gateway.signing_keys import key_id as key_id_of
from render_gateway.signing_keys import public_key_bytes

CLAIM_VERSION = 1
ALGORITHM = "Ed25519"
WINDOW_ALGORITHM = "Ed25519-window"
# What the node key signs for a window: this prefix makes the statement a message no payload
# (a JSON object, "{" first) and no other signed text of the project can be.
WINDOW_STATEMENT_PREFIX = b"render usage-claim window v1\n"
MAX_WINDOW_SIZE = 1 << 20  # far above any backend's window (the worker's limit is 65,536)

ClaimStatus = Literal["complete", "cancelled"]


class InvalidClaim(ValueError):
    """The claim is malformed, or its signature does not verify."""


@dataclass(frozen=True)
class UsageClaim:
    request_id: str
    model: str
    device_uuid: str
    device_kind: str
    gpu_seconds: float
    started_at: str
    ended_at: str
    seed: int
    output_blake3: tuple[str, ...]
    status: ClaimStatus
    steps_completed: int
    key_id: str
    version: int = CLAIM_VERSION

    def encode(self) -> bytes:
        # The instance's own field dict (orjson writes the tuple as an array): the same bytes as
        # dumping dataclasses.asdict(self), without its deep copy. (orjson's native dataclass
        # output would not sort the keys.)
        return orjson.dumps(vars(self), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def decode(cls, payload: bytes) -> UsageClaim:
        data = claim_fields(payload)
        data["output_blake3"] = tuple(data["output_blake3"])
        return cls(**data)


_FIELD_NAMES = frozenset(field.name for field in fields(UsageClaim))
_TEXT_FIELDS = ("request_id", "model", "device_uuid", "device_kind", "started_at", "ended_at",
                "status", "key_id")  # fmt: skip
_COUNT_FIELDS = ("seed", "steps_completed", "version")


def claim_fields(payload: bytes) -> dict[str, Any]:
    """The fields of a well-typed claim payload in canonical form (``UsageClaim.decode``
    without building the object: what a verifier checking many claims needs); raise
    InvalidClaim otherwise."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidClaim(f"claim payload is not a valid claim: {exc}") from exc
    if type(data) is not dict or data.keys() != _FIELD_NAMES:
        names = set(data) if isinstance(data, dict) else set()
        raise InvalidClaim(
            f"claim payload is not a valid claim: missing {sorted(_FIELD_NAMES - names)}, "
            f"unknown {sorted(names - _FIELD_NAMES)}"
        )
    for name in _TEXT_FIELDS:
        if type(data[name]) is not str:
            raise InvalidClaim(f"claim field {name!r} must be a string")
    for name in _COUNT_FIELDS:
        value = data[name]
        if type(value) is not int or value < 0:  # JSON gives int, never a subclass (bool)
            raise InvalidClaim(f"claim field {name!r} must be a non-negative integer")
    seconds = data["gpu_seconds"]
    if type(seconds) not in (int, float) or not seconds >= 0:
        raise InvalidClaim("claim field 'gpu_seconds' must be a non-negative number")
    digests = data["output_blake3"]
    if type(digests) is not list or not all(type(d) is str for d in digests):
        raise InvalidClaim("claim field 'output_blake3' must be a list of strings")
    if data["status"] not in ("complete", "cancelled"):
        raise InvalidClaim(f"claim status {data['status']!r} is not complete or cancelled")
    # Canonical: the parsed values written back are the same bytes (sorted keys, no spaces,
    # orjson's shortest floats) — what UsageClaim.decode(p).encode() == p checked before.
    if orjson.dumps(data, option=orjson.OPT_SORT_KEYS) != payload:
        raise InvalidClaim("claim payload is not in canonical form")
    return data


def window_statement(key_id: str, size: int, root: bytes) -> bytes:
    """The exact bytes a node key signs for a window of ``size`` claims whose payloads'
    RFC 6962 root (each leaf SHA-256(0x00 ‖ payload)) is ``root``."""
    return b"%s%s\n%d\n%s\n" % (WINDOW_STATEMENT_PREFIX, key_id.encode(), size, root.hex().encode())


def _hex_hash(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * HASH_SIZE:
        raise InvalidClaim(f"claim window {what} must be {2 * HASH_SIZE} hex digits")
    try:
        digest = bytes.fromhex(value)
    except ValueError as exc:
        raise InvalidClaim(f"claim window {what} is not hex: {exc}") from exc
    if digest.hex() != value:  # lower case, no spaces: one spelling per hash
        raise InvalidClaim(f"claim window {what} must be lower-case hex")
    return digest


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidClaim(f"claim window {what} must be a non-negative integer")
    return value


@dataclass(frozen=True)
class ClaimWindow:
    """Where a claim sits in the window its node key signed: leaf ``index`` of ``size``, the
    window's RFC 6962 ``root``, and the inclusion proof (``path``, sibling hashes bottom-up)."""

    index: int
    size: int
    root: bytes
    path: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "path": [node.hex() for node in self.path],
            "root": self.root.hex(),
            "size": self.size,
        }

    def to_text(self) -> str:
        """Canonical JSON (sorted keys): the attestation row's ``claim_window`` column."""
        return orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_json(cls, data: Any) -> ClaimWindow:
        if not isinstance(data, dict) or set(data) != {"index", "path", "root", "size"}:
            raise InvalidClaim("claim window must hold exactly index, path, root and size")
        path = data["path"]
        if not isinstance(path, list):
            raise InvalidClaim("claim window path must be a list of hashes")
        window = cls(
            index=_count(data["index"], "index"),
            size=_count(data["size"], "size"),
            root=_hex_hash(data["root"], "root"),
            path=tuple(_hex_hash(node, "path element") for node in path),
        )
        if not 1 <= window.size <= MAX_WINDOW_SIZE:
            raise InvalidClaim(f"claim window size {window.size} is outside 1..{MAX_WINDOW_SIZE}")
        return window

    @classmethod
    def from_text(cls, text: str) -> ClaimWindow:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InvalidClaim(f"claim window is not JSON: {exc}") from exc
        return cls.from_json(data)


class WindowStatements:
    """A bounded memory of window statements whose signature verified: (node key, statement,
    signature) — the statement names the key id, size and root. Only a verified triple is ever
    added, so a hit is exactly as good as verifying again; a miss verifies (least recently used
    entries go first, so a window met again after ``capacity`` others costs one more verify)."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._verified: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
        self._lock = threading.Lock()  # the gateway settles requests on several threads

    def __len__(self) -> int:
        return len(self._verified)

    def verify(
        self, public_key: Ed25519PublicKey, raw_key: bytes, statement: bytes, signature: bytes
    ) -> None:
        """Raise InvalidClaim unless ``signature`` is the key's signature of ``statement``."""
        entry = (raw_key, statement, signature)
        with self._lock:
            if entry in self._verified:
                self._verified.move_to_end(entry)
                return
        try:
            public_key.verify(signature, statement)
        except InvalidSignature as exc:
            raise InvalidClaim("claim window signature does not verify") from exc
        with self._lock:
            self._verified[entry] = None
            if len(self._verified) > self._capacity:
                self._verified.popitem(last=False)


# The gateway's, shared by every settle (each window verified once, not once per request).
SETTLE_STATEMENTS = WindowStatements()


@dataclass(frozen=True)
class SignedClaim:
    payload: bytes
    signature: bytes
    key_id: str
    algorithm: str = ALGORITHM
    window: ClaimWindow | None = None  # set exactly when the algorithm is Ed25519-window

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "payload": self.payload.decode(),
            "signature": base64.b64encode(self.signature).decode(),
            "key_id": self.key_id,
            "alg": self.algorithm,
        }
        if self.window is not None:
            data["window"] = self.window.to_json()
        return data

    def to_text(self) -> str:
        """The single-string form carried in a KServe v2 parameter (parameters are scalars)."""
        return orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_json(cls, data: Any) -> SignedClaim:
        try:
            signed = cls(
                payload=str(data["payload"]).encode(),
                signature=base64.b64decode(str(data["signature"]), validate=True),
                key_id=str(data["key_id"]),
                algorithm=str(data["alg"]),
            )
            window = data.get("window")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # ValueError covers binascii.Error; AttributeError a list (no .get)
            raise InvalidClaim(f"signed claim is malformed: {exc}") from exc
        if (window is not None) != (signed.algorithm == WINDOW_ALGORITHM):
            raise InvalidClaim(
                f"signed claim is malformed: alg {signed.algorithm!r} with"
                f"{'' if window is not None else 'out'} a window"
            )
        if window is None:
            return signed
        return cls(signed.payload, signed.signature, signed.key_id, signed.algorithm,
                   ClaimWindow.from_json(window))  # fmt: skip

    @classmethod
    def from_text(cls, text: str) -> SignedClaim:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InvalidClaim(f"signed claim is not JSON: {exc}") from exc
        return cls.from_json(data)


def sign_claim(claim: UsageClaim, private_key: Ed25519PrivateKey) -> SignedClaim:
    expected_id = key_id_of(private_key.public_key())
    if claim.key_id != expected_id:
        raise ValueError(f"claim names key {claim.key_id}, but the signing key is {expected_id}")
    payload = claim.encode()
    return SignedClaim(payload=payload, signature=private_key.sign(payload), key_id=claim.key_id)


def sign_window(
    claims: Sequence[UsageClaim], private_key: Ed25519PrivateKey, key_id: str | None = None
) -> list[SignedClaim]:
    """Sign ``claims`` as one window (one Ed25519 signature over the statement of their root);
    each signed claim carries its own payload and inclusion proof. ``key_id``: the key's id,
    when the caller has it already."""
    key_id = key_id or key_id_of(private_key.public_key())
    for claim in claims:
        if claim.key_id != key_id:
            raise ValueError(f"claim names key {claim.key_id}, but the signing key is {key_id}")
    if not 1 <= len(claims) <= MAX_WINDOW_SIZE:
        raise ValueError(f"a window holds 1..{MAX_WINDOW_SIZE} claims, not {len(claims)}")
    payloads = [claim.encode() for claim in claims]
    root, paths = window_tree([leaf_hash(payload) for payload in payloads])
    signature = private_key.sign(window_statement(key_id, len(payloads), root))
    return [
        SignedClaim(payload, signature, key_id, WINDOW_ALGORITHM,
                    ClaimWindow(index, len(payloads), root, path))
        for index, (payload, path) in enumerate(zip(payloads, paths, strict=True))
    ]  # fmt: skip


def window_tree(leaves: Sequence[bytes]) -> tuple[bytes, list[tuple[bytes, ...]]]:
    """The RFC 6962 root of ``leaves`` (leaf hashes, at least one) and every leaf's inclusion
    proof, in O(n log n): the RFC's tree (split at the largest power of two below n) is the one
    built level by level, pairing neighbours and lifting a level's odd last node unchanged."""
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    paths: list[tuple[bytes, ...]] = []
    for index in range(len(leaves)):
        path: list[bytes] = []
        position = index
        for level in levels[:-1]:
            sibling = position ^ 1
            if sibling < len(level):  # a lifted node has no sibling on its level
                path.append(level[sibling])
            position >>= 1
        paths.append(tuple(path))
    return levels[-1][0], paths


def verify_window_claim(
    signed: SignedClaim,
    public_key: Ed25519PublicKey,
    raw_key: bytes,
    statements: WindowStatements | None = None,
) -> None:
    """Check that a window claim's payload is in its window and that the window's statement is
    signed by ``public_key`` (whose raw bytes are ``raw_key``); raise InvalidClaim otherwise.
    The inclusion proof is checked first: it is cheap, and a statement is worth verifying (and
    remembering) only once a claim is known to belong to it."""
    window = signed.window
    if window is None:
        raise InvalidClaim("a window claim carries no window")
    try:
        verify_inclusion(leaf_hash(signed.payload), window.index, window.size, window.path,
                         window.root)  # fmt: skip
    except ProofError as exc:
        raise InvalidClaim(f"the claim is not in its window: {exc}") from exc
    statement = window_statement(signed.key_id, window.size, window.root)
    if statements is not None:
        statements.verify(public_key, raw_key, statement, signed.signature)
        return
    try:
        public_key.verify(signed.signature, statement)
    except InvalidSignature as exc:
        raise InvalidClaim("claim window signature does not verify") from exc


def verify_claim(
    signed: SignedClaim,
    public_key: Ed25519PublicKey,
    statements: WindowStatements | None = None,
) -> UsageClaim:
    """Return the claim if the signature holds for ``public_key``; raise InvalidClaim otherwise.
    ``statements``: window statements already verified (a window claim's statement is then
    verified only if it is not one of them, and remembered once it is)."""
    if signed.algorithm not in (ALGORITHM, WINDOW_ALGORITHM):
        raise InvalidClaim(f"unsupported claim algorithm {signed.algorithm!r}")
    if signed.key_id != key_id_of(public_key):
        raise InvalidClaim(f"claim was signed by key {signed.key_id}, not {key_id_of(public_key)}")
    if signed.algorithm == WINDOW_ALGORITHM:
        verify_window_claim(signed, public_key, public_key_bytes(public_key), statements)
    elif signed.window is not None:
        raise InvalidClaim("a directly signed claim carries a window")
    else:
        try:
            public_key.verify(signed.signature, signed.payload)
        except InvalidSignature as exc:
            raise InvalidClaim("claim signature does not verify") from exc
    claim = UsageClaim.decode(signed.payload)
    if claim.key_id != signed.key_id:
        raise InvalidClaim("claim payload names a different key than its envelope")
    return claim


@dataclass(frozen=True)
class ClaimCheck:
    """What the gateway found when a request settled: the node key that verified the backend's
    claim, or why it did not verify (exactly one of the two is set)."""

    public_key: bytes | None = None
    error: str | None = None


def check_claim_text(
    text: str,
    node_keys: Mapping[str, bytes],
    request_id: str,
    gpu_seconds: float | None,
    statements: WindowStatements = SETTLE_STATEMENTS,
) -> ClaimCheck:
    """Check a claim as the backend sent it against the node keys the gateway knows (key id →
    raw Ed25519 public key): its signature (for a window claim: its inclusion proof, then the
    window's statement, verified once per window), its request id and the GPU-seconds
    reported beside it (``None`` when the backend reported none)."""
    try:
        signed = SignedClaim.from_text(text)
        raw = node_keys.get(signed.key_id)
        if raw is None:
            return ClaimCheck(error=f"node key {signed.key_id} is not one the gateway knows")
        claim = verify_claim(signed, Ed25519PublicKey.from_public_bytes(raw), statements)
    except (InvalidClaim, ValueError) as exc:
        return ClaimCheck(error=f"the claim does not verify: {exc}")
    if claim.request_id != request_id:
        return ClaimCheck(error=f"the claim is for request {claim.request_id}")
    if gpu_seconds is None or not math.isclose(
        claim.gpu_seconds, gpu_seconds, rel_tol=1e-9, abs_tol=1e-9
    ):
        return ClaimCheck(
            error=f"the claim says {claim.gpu_seconds} GPU-seconds, not {gpu_seconds}"
        )
    return ClaimCheck(public_key=raw)

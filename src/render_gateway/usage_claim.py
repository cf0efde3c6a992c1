"""The backend's signed usage claim: the "discharge proof" the audit trail stores.

The signature covers the exact payload bytes, and those bytes travel with it, so a verifier
never has to re-create a canonical encoding (floats, key order) to check a claim. The payload
itself is canonical anyway (sorted keys, no spaces, UTF-8) so that equal claims are equal bytes.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from render_gateway.signing_keys import key_id as key_id_of

CLAIM_VERSION = 1
ALGORITHM = "Ed25519"

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
        fields = asdict(self)
        fields["output_blake3"] = list(self.output_blake3)
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def decode(cls, payload: bytes) -> UsageClaim:
        try:
            fields = orjson.loads(payload)
            fields["output_blake3"] = tuple(fields["output_blake3"])
            claim = cls(**fields)
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            raise InvalidClaim(f"claim payload is not a valid claim: {exc}") from exc
        claim._check_types()
        if claim.encode() != payload:
            raise InvalidClaim("claim payload is not in canonical form")
        return claim

    def _check_types(self) -> None:
        text_fields = ("request_id", "model", "device_uuid", "device_kind", "started_at",
                       "ended_at", "status", "key_id")  # fmt: skip
        for name in text_fields:
            if not isinstance(getattr(self, name), str):
                raise InvalidClaim(f"claim field {name!r} must be a string")
        for name in ("seed", "steps_completed", "version"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidClaim(f"claim field {name!r} must be a non-negative integer")
        seconds = self.gpu_seconds
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            raise InvalidClaim("claim field 'gpu_seconds' must be a non-negative number")
        if not all(isinstance(d, str) for d in self.output_blake3):
            raise InvalidClaim("claim field 'output_blake3' must be a list of strings")
        if self.status not in ("complete", "cancelled"):
            raise InvalidClaim(f"claim status {self.status!r} is not complete or cancelled")


@dataclass(frozen=True)
class SignedClaim:
    payload: bytes
    signature: bytes
    key_id: str
    algorithm: str = ALGORITHM

    def to_json(self) -> dict[str, str]:
        return {
            "payload": self.payload.decode(),
            "signature": base64.b64encode(self.signature).decode(),
            "key_id": self.key_id,
            "alg": self.algorithm,
        }

    def to_text(self) -> str:
        """The single-string form carried in a KServe v2 parameter (parameters are scalars)."""
        return orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_json(cls, data: Any) -> SignedClaim:
        try:
            return cls(
                payload=str(data["payload"]).encode(),
                signature=base64.b64decode(str(data["signature"]), validate=True),
                key_id=str(data["key_id"]),
                algorithm=str(data["alg"]),
            )
        except (KeyError, TypeError, ValueError) as exc:  # ValueError covers binascii.Error
            raise InvalidClaim(f"signed claim is malformed: {exc}") from exc

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


def verify_claim(signed: SignedClaim, public_key: Ed25519PublicKey) -> UsageClaim:
    """Return the claim if the signature holds for ``public_key``; raise InvalidClaim otherwise."""
    if signed.algorithm != ALGORITHM:
        raise InvalidClaim(f"unsupported claim algorithm {signed.algorithm!r}")
    if signed.key_id != key_id_of(public_key):
        raise InvalidClaim(f"claim was signed by key {signed.key_id}, not {key_id_of(public_key)}")
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
    text: str, node_keys: Mapping[str, bytes], request_id: str, gpu_seconds: float | None
) -> ClaimCheck:
    """Check a claim as the backend sent it against the node keys the gateway knows (key id →
    raw Ed25519 public key): its signature, its request id and the GPU-seconds reported
    beside it (``None`` when the backend reported none)."""
    try:
        signed = SignedClaim.from_text(text)
        raw = node_keys.get(signed.key_id)
        if raw is None:
            return ClaimCheck(error=f"node key {signed.key_id} is not one the gateway knows")
        claim = verify_claim(signed, Ed25519PublicKey.from_public_bytes(raw))
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

"""Public keys that may verify JWTs, each bound to the one algorithm its type allows.

Binding a key to an algorithm by its *type* (never by what a token or a JWKS entry claims) is
what makes algorithm confusion impossible: an RSA key only ever verifies RS256, and no public key
is ever used as an HMAC secret.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

PublicKey = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey
_PUBLIC_KEY_TYPES = (RSAPublicKey, EllipticCurvePublicKey, Ed25519PublicKey, Ed448PublicKey)

ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
MIN_RSA_BITS = 2048
# A key set is small; a cap keeps a hostile or broken JWKS from making every kid-less token
# cost thousands of signature checks.
MAX_JWKS_KEYS = 64

_JWK_PARSERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "RSA": RSAAlgorithm.from_jwk,
    "EC": ECAlgorithm.from_jwk,
    "OKP": OKPAlgorithm.from_jwk,
    # "oct" (symmetric) is missing on purpose: a published key set must never hold a secret.
}


@dataclass(frozen=True)
class VerificationKey:
    algorithm: str  # the one JWS algorithm this key may verify
    key: PublicKey
    kid: str | None = None


def algorithm_for(key: object) -> str | None:
    """The algorithm a public key may verify; None for private keys, weak keys, other curves."""
    if isinstance(key, RSAPublicKey):
        return "RS256" if key.key_size >= MIN_RSA_BITS else None
    if isinstance(key, EllipticCurvePublicKey):
        return "ES256" if isinstance(key.curve, SECP256R1) else None
    if isinstance(key, Ed25519PublicKey | Ed448PublicKey):
        return "EdDSA"
    return None


def load_pem_keys(pems: Iterable[str]) -> tuple[VerificationKey, ...]:
    """Keys from configuration: ValueError for any that cannot be parsed or used."""
    keys = []
    for index, pem in enumerate(pems):
        try:
            key = load_pem_public_key(pem.encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"public key #{index} is not a PEM public key: {exc}") from exc
        algorithm = algorithm_for(key)
        if algorithm is None or not isinstance(key, _PUBLIC_KEY_TYPES):
            raise ValueError(
                f"public key #{index} ({type(key).__name__}) fits none of RS256 (RSA ≥ "
                f"{MIN_RSA_BITS} bits), ES256 (P-256), EdDSA (Ed25519, Ed448)"
            )
        keys.append(VerificationKey(algorithm, key))
    return tuple(keys)


def parse_jwks(document: object) -> tuple[VerificationKey, ...]:
    """The usable signing keys of a JWKS document; entries that are not are skipped.

    ValueError if the document is not a key set at all.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document: no 'keys' list")
    keys: list[VerificationKey] = []
    for entry in document["keys"]:
        key = _parse_jwk(entry)
        if key is not None:
            keys.append(key)
            if len(keys) == MAX_JWKS_KEYS:
                break
    return tuple(keys)


def _parse_jwk(entry: object) -> VerificationKey | None:
    if not isinstance(entry, dict) or "d" in entry:  # "d": a private key, published by mistake
        return None
    if entry.get("use", "sig") != "sig":
        return None
    kty = entry.get("kty")
    parser = _JWK_PARSERS.get(kty) if isinstance(kty, str) else None
    if parser is None:
        return None
    try:
        key = parser(entry)
    except (InvalidKeyError, ValueError, TypeError, KeyError, UnsupportedAlgorithm):
        return None
    algorithm = algorithm_for(key)
    declared = entry.get("alg")
    if algorithm is None or not isinstance(key, _PUBLIC_KEY_TYPES):
        return None
    if declared is not None and declared != algorithm:  # e.g. an RSA key meant for PS256
        return None
    kid = entry.get("kid")
    return VerificationKey(algorithm, key, kid if isinstance(kid, str) else None)

"""JWT verification: signature, algorithm allow-list, ``exp``/``nbf``/``iss``/``aud``, ``sub``.

The unverified header is read for two things only, the algorithm and the ``kid``, and the
algorithm must be on the allow-list before anything else happens: that defeats ``alg: none``
and algorithm confusion. HS256 is checked against the configured secret only, and an asymmetric
algorithm only against public keys of the matching type (see ``verification_keys``). Header
fields that point at keys (``jku``, ``x5u``, ``jwk``) are ignored: the token never chooses
where its keys come from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
from jwt.types import Options

from render_gateway.auth.jwks import JwksCache, JwksUnavailable
from render_gateway.auth.names import check_name, is_valid_name
from render_gateway.auth.principal import AuthError, Principal
from render_gateway.auth.verification_keys import (
    ASYMMETRIC_ALGORITHMS,
    PublicKey,
    VerificationKey,
    load_pem_keys,
)

SUPPORTED_ALGORITHMS = frozenset({"HS256"}) | ASYMMETRIC_ALGORITHMS
MIN_HS256_SECRET_BYTES = 32  # RFC 7518 §3.2: at least as long as the hash output
MAX_TOKEN_CHARS = 16 * 1024  # far above any real token; bounds the parsing work


@dataclass(frozen=True)
class JwtSettings:
    issuer: str | None
    audience: str | None  # None: tokens are not checked for an audience at all
    algorithms: tuple[str, ...]
    hs256_secret: bytes | None = field(default=None, repr=False)
    public_keys_pem: tuple[str, ...] = ()
    jwks_url: str | None = None
    leeway_seconds: float = 30
    plan_claim: str = "plan"
    default_plan: str = "default"
    jwks_cache_seconds: float = 300

    def __post_init__(self) -> None:
        if not self.algorithms:
            raise ValueError("algorithms must name at least one algorithm")
        if any(alg.lower() == "none" for alg in self.algorithms):
            raise ValueError("the 'none' algorithm is never allowed")
        unsupported = set(self.algorithms) - SUPPORTED_ALGORITHMS
        if unsupported:
            raise ValueError(
                f"unsupported algorithms {sorted(unsupported)}; "
                f"choose from {sorted(SUPPORTED_ALGORITHMS)}"
            )
        if "HS256" in self.algorithms:
            if self.hs256_secret is None or len(self.hs256_secret) < MIN_HS256_SECRET_BYTES:
                raise ValueError(f"HS256 needs a secret of at least {MIN_HS256_SECRET_BYTES} bytes")
            if self.hs256_secret.lstrip().startswith(b"-----BEGIN"):
                raise ValueError("the HS256 secret is a PEM key; configure it as a public key")
        asymmetric = ASYMMETRIC_ALGORITHMS.intersection(self.algorithms)
        if asymmetric and not self.public_keys_pem and self.jwks_url is None:
            raise ValueError(f"{sorted(asymmetric)} need public_keys_pem or a jwks_url")
        if self.jwks_url is not None and urlsplit(self.jwks_url).scheme not in ("https", "http"):
            raise ValueError("jwks_url must be an http(s) URL")
        if self.issuer == "" or self.audience == "":
            raise ValueError("issuer and audience are either None (not checked) or non-empty")
        if not 0 <= self.leeway_seconds <= 300:
            raise ValueError("leeway_seconds must be between 0 and 300")
        if self.jwks_cache_seconds <= 0:
            raise ValueError("jwks_cache_seconds must be positive")
        if not self.plan_claim:
            raise ValueError("plan_claim must not be empty")
        check_name("default_plan", self.default_plan)


class JwtVerifier:
    """Turns a verified JWT into a Principal: ``sub`` is the customer, ``plan_claim`` the plan."""

    def __init__(self, settings: JwtSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        static_keys = load_pem_keys(settings.public_keys_pem)
        for key in static_keys:
            if key.algorithm not in settings.algorithms:
                raise ValueError(f"a configured {key.algorithm} key, but {key.algorithm} is off")
        self._static_keys = static_keys
        self._jwks = (
            JwksCache(settings.jwks_url, settings.jwks_cache_seconds, clock=clock)
            if settings.jwks_url is not None
            else None
        )
        required = ["exp", "sub"]
        required += ["iss"] if settings.issuer is not None else []
        required += ["aud"] if settings.audience is not None else []
        self._options: Options = {
            "verify_signature": True,
            "require": required,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_iss": settings.issuer is not None,
            "verify_aud": settings.audience is not None,
            "verify_sub": True,
            "verify_jti": True,
        }

    async def verify(self, token: str) -> Principal:
        algorithm, kid = self._read_header(token)
        keys = await self._keys_for(algorithm, kid)
        claims = self._decode(token, algorithm, keys)
        return self._principal(claims)

    def _read_header(self, token: str) -> tuple[str, str | None]:
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError("invalid_token", "the token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("invalid_token", "the token is not a well-formed JWT") from exc
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._settings.algorithms:
            raise AuthError("invalid_token", "the token's signing algorithm is not accepted")
        kid = header.get("kid")
        return algorithm, kid if isinstance(kid, str) else None

    async def _keys_for(self, algorithm: str, kid: str | None) -> Sequence[PublicKey | bytes]:
        if algorithm == "HS256":
            assert self._settings.hs256_secret is not None  # JwtSettings insists on it
            return (self._settings.hs256_secret,)
        # Configured keys carry no kid: they are candidates whatever the token names.
        keys: list[PublicKey | bytes] = [
            key.key for key in self._static_keys if key.algorithm == algorithm
        ]
        if self._jwks is not None:
            try:
                published = _matching(await self._jwks.keys(), algorithm, kid)
                if not published and kid is not None:
                    published = _matching(await self._jwks.keys_after_unknown_kid(), algorithm, kid)
            except JwksUnavailable as exc:
                if not keys:
                    raise AuthError(
                        "keys_unavailable", "the token's signing keys cannot be fetched now"
                    ) from exc
                published = []
            keys += [key.key for key in published]
        return keys

    def _decode(
        self, token: str, algorithm: str, keys: Sequence[PublicKey | bytes]
    ) -> dict[str, Any]:
        settings = self._settings
        for key in keys:
            try:
                return jwt.decode(
                    token,
                    key,
                    algorithms=[algorithm],
                    options=self._options,
                    audience=settings.audience,
                    issuer=settings.issuer,
                    leeway=settings.leeway_seconds,
                )
            except jwt.InvalidSignatureError:
                continue  # not this key; the signature is checked before any claim
            except jwt.ExpiredSignatureError as exc:
                raise AuthError("expired_token", "the token has expired") from exc
            except jwt.ImmatureSignatureError as exc:
                raise AuthError("invalid_token", "the token is not valid yet") from exc
            except jwt.MissingRequiredClaimError as exc:
                raise AuthError("invalid_token", f"the token has no '{exc.claim}' claim") from exc
            except jwt.InvalidAudienceError as exc:
                raise AuthError("invalid_token", "the token is meant for another audience") from exc
            except jwt.InvalidIssuerError as exc:
                raise AuthError("invalid_token", "the token comes from another issuer") from exc
            except jwt.PyJWTError as exc:
                raise AuthError("invalid_token", "the token is invalid") from exc
        raise AuthError("invalid_token", "the token's signature matches no accepted key")

    def _principal(self, claims: dict[str, Any]) -> Principal:
        customer_id = claims["sub"]  # present and a string: PyJWT checked both
        if not is_valid_name(customer_id):
            raise AuthError("invalid_token", "the token's subject is not a valid customer id")
        plan = claims.get(self._settings.plan_claim)
        if plan is None:
            plan = self._settings.default_plan
        elif not is_valid_name(plan):
            raise AuthError("invalid_token", "the token's plan is not a valid plan name")
        return Principal(customer_id=customer_id, plan=plan, method="jwt")


def _matching(
    keys: Sequence[VerificationKey], algorithm: str, kid: str | None
) -> list[VerificationKey]:
    """Keys of the token's algorithm, and with its kid when it names one."""
    return [k for k in keys if k.algorithm == algorithm and (kid is None or k.kid == kid)]

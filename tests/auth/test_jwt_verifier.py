"""JWT verification with real keys: every algorithm, every way a token can be wrong, and JWKS
fetched from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import jwt
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from render_gateway.auth.jwt_verifier import JwtSettings, JwtVerifier
from render_gateway.auth.principal import AuthError, Principal
from render_gateway.auth.verification_keys import parse_jwks

from support.clock import FakeClock

ISSUER = "https://issuer.example"
AUDIENCE = "render-gateway"
HS_SECRET = b"s" * 16 + b"0123456789abcdef"  # 32 bytes: the minimum
ALGORITHMS = ["HS256", "RS256", "ES256", "EdDSA"]
ASYMMETRIC = ["RS256", "ES256", "EdDSA"]
DROP = object()  # a claim value meaning "leave this claim out"

# ---------------------------------------------------------------------------- keys, tokens


def new_private_key(algorithm: str) -> Any:
    if algorithm == "HS256":
        return secrets.token_bytes(32)
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


@functools.cache
def signing_key(algorithm: str, name: str = "main") -> Any:
    """One key per (algorithm, name), made once per test session."""
    if algorithm == "HS256" and name == "main":
        return HS_SECRET
    return new_private_key(algorithm)


def public_pem(private_key: Any) -> str:
    pem: bytes = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def public_jwk(private_key: Any, kid: str) -> dict[str, Any]:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "use": "sig"}


def settings_for(algorithm: str, **changes: Any) -> JwtSettings:
    """A verifier configuration accepting ``algorithm`` with its "main" key."""
    if algorithm == "HS256":
        base = JwtSettings(ISSUER, AUDIENCE, ("HS256",), hs256_secret=HS_SECRET)
    else:
        pem = public_pem(signing_key(algorithm))
        base = JwtSettings(ISSUER, AUDIENCE, (algorithm,), public_keys_pem=(pem,))
    return replace(base, **changes)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": "cust_1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "plan": "pro",
    }
    values.update(changes)
    return {name: value for name, value in values.items() if value is not DROP}


def sign(algorithm: str, payload: dict[str, Any], key: Any = None, kid: str | None = None) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key or signing_key(algorithm), algorithm=algorithm, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def hmac_token(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """An HS-signed token built by hand (PyJWT refuses to sign with a PEM as the secret)."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
    signature = hmac.new(secret, signing_input.encode(), digest[header["alg"]]).digest()
    return f"{signing_input}.{b64url(signature)}"


async def rejected(verifier: JwtVerifier, token: str, code: str = "invalid_token") -> AuthError:
    with pytest.raises(AuthError) as caught:
        await verifier.verify(token)
    assert caught.value.code == code, caught.value.message
    assert token not in str(caught.value)
    return caught.value


# ----------------------------------------------------------------------- every algorithm


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_valid_token_gives_the_customer_and_plan(algorithm: str) -> None:
    verifier = JwtVerifier(settings_for(algorithm))
    principal = await verifier.verify(sign(algorithm, claims(sub="cust_42", plan="enterprise")))
    assert principal == Principal(customer_id="cust_42", plan="enterprise", method="jwt")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_plan_falls_back_to_the_default(algorithm: str) -> None:
    verifier = JwtVerifier(settings_for(algorithm, default_plan="starter"))
    principal = await verifier.verify(sign(algorithm, claims(plan=DROP)))
    assert principal.plan == "starter"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_plan_claim_name_is_configurable(algorithm: str) -> None:
    verifier = JwtVerifier(settings_for(algorithm, plan_claim="https://render/plan"))
    token = sign(algorithm, claims(plan="ignored", **{"https://render/plan": "gold"}))
    assert (await verifier.verify(token)).plan == "gold"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_tampered_payload_is_rejected(algorithm: str) -> None:
    verifier = JwtVerifier(settings_for(algorithm))
    header, _, signature = sign(algorithm, claims()).split(".")
    forged = f"{header}.{segment(claims(sub='mallory', plan='enterprise'))}.{signature}"
    await rejected(verifier, forged)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_token_signed_by_another_key_is_rejected(algorithm: str) -> None:
    verifier = JwtVerifier(settings_for(algorithm))
    await rejected(verifier, sign(algorithm, claims(), key=signing_key(algorithm, "other")))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("none", ["none", "None", "NONE"])
async def test_alg_none_is_rejected(algorithm: str, none: str) -> None:
    verifier = JwtVerifier(settings_for(algorithm))
    unsigned = f"{segment({'alg': none, 'typ': 'JWT'})}.{segment(claims())}."
    await rejected(verifier, unsigned)
    # Also with a real signature left in place: the header alone decides, and it says none.
    real_signature = sign(algorithm, claims()).split(".")[2]
    await rejected(verifier, unsigned + real_signature)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_expired_token(algorithm: str) -> None:
    verifier = JwtVerifier(settings_for(algorithm, leeway_seconds=30))
    now = int(time.time())
    await rejected(verifier, sign(algorithm, claims(exp=now - 60, iat=now - 400)), "expired_token")
    # Inside the leeway a slightly slow clock on either side is forgiven.
    await verifier.verify(sign(algorithm, claims(exp=now - 5, iat=now - 400)))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_not_yet_valid_token(algorithm: str) -> None:
    verifier = JwtVerifier(settings_for(algorithm, leeway_seconds=30))
    now = int(time.time())
    error = await rejected(verifier, sign(algorithm, claims(nbf=now + 300)))
    assert "not valid yet" in error.message
    await verifier.verify(sign(algorithm, claims(nbf=now + 5)))  # within the leeway
    await verifier.verify(sign(algorithm, claims(nbf=now - 60)))


BAD_CLAIMS: dict[str, dict[str, Any]] = {
    "wrong audience": {"aud": "someone-else"},
    "wrong audience in a list": {"aud": ["someone-else", "another"]},
    "wrong issuer": {"iss": "https://evil.example"},
    "missing sub": {"sub": DROP},
    "missing exp": {"exp": DROP},
    "missing iss": {"iss": DROP},
    "missing aud": {"aud": DROP},
    "sub not a string": {"sub": 42},
    "sub not a customer id": {"sub": "auth0|123 456"},
    "plan not a plan name": {"plan": "pro; DROP TABLE"},
    "plan not a string": {"plan": ["pro"]},
    "exp not a number": {"exp": "tomorrow"},
    "issued in the future": {"iat": int(time.time()) + 3600},
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", sorted(BAD_CLAIMS))
async def test_bad_claims_are_rejected(algorithm: str, case: str) -> None:
    verifier = JwtVerifier(settings_for(algorithm))
    await rejected(verifier, sign(algorithm, claims(**BAD_CLAIMS[case])))


async def test_audience_in_a_list_is_accepted() -> None:
    verifier = JwtVerifier(settings_for("HS256"))
    await verifier.verify(sign("HS256", claims(aud=["other", AUDIENCE])))


async def test_issuer_and_audience_unchecked_when_not_configured() -> None:
    verifier = JwtVerifier(settings_for("HS256", issuer=None, audience=None))
    principal = await verifier.verify(sign("HS256", claims(iss=DROP, aud="anything")))
    assert principal.customer_id == "cust_1"


# ---------------------------------------------------------------- the algorithm allow-list


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
async def test_hs256_signed_with_the_public_key_pem_is_rejected(algorithm: str) -> None:
    # Algorithm confusion: a verifier that fed its public key to HMAC would accept this.
    pem = public_pem(signing_key(algorithm)).encode()
    forged = hmac_token({"alg": "HS256", "typ": "JWT"}, claims(), pem)
    await rejected(JwtVerifier(settings_for(algorithm)), forged)
    # Even with HS256 allowed (with its own secret) the public key is never an HMAC secret.
    both = settings_for(algorithm, algorithms=(algorithm, "HS256"), hs256_secret=HS_SECRET)
    await rejected(JwtVerifier(both), forged)
    await JwtVerifier(both).verify(sign(algorithm, claims()))


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
async def test_validly_signed_token_outside_the_allow_list_is_rejected(algorithm: str) -> None:
    hs_only = JwtVerifier(settings_for("HS256"))
    await rejected(hs_only, sign(algorithm, claims()))
    other = next(a for a in ASYMMETRIC if a != algorithm)
    await rejected(JwtVerifier(settings_for(other)), sign(algorithm, claims()))


async def test_stronger_variants_of_allowed_families_are_rejected() -> None:
    # The right secret or key, but HS384/HS512/RS512/PS256 are not on the list.
    hs = JwtVerifier(settings_for("HS256"))
    for alg in ("HS384", "HS512"):
        await rejected(hs, hmac_token({"alg": alg}, claims(), HS_SECRET))
    rs = JwtVerifier(settings_for("RS256"))
    for alg in ("RS512", "PS256"):
        await rejected(rs, jwt.encode(claims(), signing_key("RS256"), algorithm=alg))


async def test_malformed_tokens_are_rejected() -> None:
    verifier = JwtVerifier(settings_for("HS256"))
    good = sign("HS256", claims())
    header, payload, signature = good.split(".")
    for token in (
        "a.b.c",
        "..",
        f"{header}.{payload}",
        f"{header}.!!!.{signature}",
        f"{segment({'alg': 'HS256', 'kid': 7})}.{payload}.{signature}",
        f"{b64url(b'not json')}.{payload}.{signature}",
        f"{segment({'typ': 'JWT'})}.{payload}.{signature}",  # no alg at all
        good + "A" * 20_000,
    ):
        await rejected(verifier, token)


# ------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"algorithms": ()}, "at least one"),
        ({"algorithms": ("none",)}, "never allowed"),
        ({"algorithms": ("HS256", "None")}, "never allowed"),
        ({"algorithms": ("HS384",)}, "unsupported"),
        ({"algorithms": ("PS256",)}, "unsupported"),
        ({"hs256_secret": None}, "at least 32 bytes"),
        ({"hs256_secret": b"x" * 31}, "at least 32 bytes"),
        ({"algorithms": ("RS256",)}, "public_keys_pem or a jwks_url"),
        ({"jwks_url": "file:///etc/jwks.json"}, "http"),
        ({"issuer": ""}, "non-empty"),
        ({"leeway_seconds": -1}, "leeway"),
        ({"jwks_cache_seconds": 0}, "positive"),
        ({"default_plan": "has space"}, "default_plan"),
    ],
)
def test_invalid_settings_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_for("HS256", **changes)


def test_pem_as_hs256_secret_is_refused() -> None:
    pem = public_pem(signing_key("RS256")).encode()
    with pytest.raises(ValueError, match="PEM"):
        settings_for("HS256", hs256_secret=pem)


def test_unusable_public_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="not a PEM public key"):
        JwtVerifier(settings_for("RS256", public_keys_pem=("garbage",)))
    weak = public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(ValueError, match="fits none"):
        JwtVerifier(settings_for("RS256", public_keys_pem=(weak,)))
    p384 = public_pem(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError, match="fits none"):
        JwtVerifier(settings_for("ES256", public_keys_pem=(p384,)))
    with pytest.raises(ValueError, match="is off"):  # an RSA key while only ES256 is allowed
        JwtVerifier(settings_for("ES256", public_keys_pem=(public_pem(signing_key("RS256")),)))


def test_secret_is_not_in_the_settings_repr() -> None:
    assert HS_SECRET.decode() not in repr(settings_for("HS256"))


def test_jwks_parsing_keeps_only_public_signing_keys() -> None:
    rsa_key, ec_key = signing_key("RS256"), signing_key("ES256")
    private_jwk = RSAAlgorithm.to_jwk(rsa_key, as_dict=True)
    document = {
        "keys": [
            public_jwk(rsa_key, "good-rsa"),
            public_jwk(ec_key, "good-ec"),
            {**private_jwk, "kid": "private"},
            {**public_jwk(rsa_key, "enc"), "use": "enc"},
            {**public_jwk(rsa_key, "ps"), "alg": "PS256"},
            public_jwk(ec.generate_private_key(ec.SECP384R1()), "p384"),
            {"kty": "oct", "k": b64url(HS_SECRET), "kid": "symmetric"},
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            "not an object",
        ]
    }
    assert [(k.kid, k.algorithm) for k in parse_jwks(document)] == [
        ("good-rsa", "RS256"),
        ("good-ec", "ES256"),
    ]
    with pytest.raises(ValueError):
        parse_jwks({"no": "keys"})


# ----------------------------------------------------------------------------------- JWKS


@dataclass
class JwksServer:
    """What the local JWKS endpoint serves, and how often it was asked."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    hits: int = 0
    status: int = 200
    body: bytes | None = None  # served instead of ``keys`` when set
    delay: float = 0.0  # so concurrent verifications overlap with a fetch in flight


@pytest_asyncio.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()

    async def serve(request: web.Request) -> web.StreamResponse:
        server.hits += 1
        await asyncio.sleep(server.delay)
        if server.status != 200:
            return web.Response(status=server.status)
        if server.body is not None:
            return web.Response(body=server.body, content_type="application/json")
        return web.json_response({"keys": server.keys})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    yield server
    await runner.cleanup()


def jwks_verifier(
    server: JwksServer, algorithms: tuple[str, ...], **changes: Any
) -> tuple[JwtVerifier, FakeClock]:
    clock = FakeClock()
    settings = JwtSettings(ISSUER, AUDIENCE, algorithms, jwks_url=server.url, **changes)
    return JwtVerifier(settings, clock=clock), clock


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
async def test_jwks_keys_verify_by_kid(jwks_server: JwksServer, algorithm: str) -> None:
    key, other = signing_key(algorithm), signing_key(algorithm, "other")
    jwks_server.keys = [public_jwk(other, "k-other"), public_jwk(key, "k-main")]
    verifier, _ = jwks_verifier(jwks_server, (algorithm,))
    principal = await verifier.verify(sign(algorithm, claims(), key=key, kid="k-main"))
    assert principal.customer_id == "cust_1"
    await verifier.verify(sign(algorithm, claims(), key=other, kid="k-other"))
    await verifier.verify(sign(algorithm, claims(), key=key))  # no kid: every key of its type
    assert jwks_server.hits == 1  # cached
    # A key of the set, but named by the other key's kid: kids are matched, not tried around.
    await rejected(verifier, sign(algorithm, claims(), key=other, kid="k-main"))
    # Every token check still holds for JWKS keys.
    await rejected(verifier, sign(algorithm, claims(aud="nope"), key=key, kid="k-main"))


async def test_jwks_rotation_is_picked_up_after_a_refetch(jwks_server: JwksServer) -> None:
    old, new = signing_key("ES256"), signing_key("ES256", "rotated")
    jwks_server.keys = [public_jwk(old, "2024")]
    verifier, clock = jwks_verifier(jwks_server, ("ES256",))
    await verifier.verify(sign("ES256", claims(), key=old, kid="2024"))
    assert jwks_server.hits == 1

    jwks_server.keys = [public_jwk(old, "2024"), public_jwk(new, "2025")]
    rotated = sign("ES256", claims(), key=new, kid="2025")
    # Fetched a moment ago: the unknown kid may not trigger another fetch yet.
    await rejected(verifier, rotated)
    assert jwks_server.hits == 1

    clock.advance(30)
    assert (await verifier.verify(rotated)).customer_id == "cust_1"
    assert jwks_server.hits == 2
    await verifier.verify(sign("ES256", claims(), key=old, kid="2024"))
    assert jwks_server.hits == 2


async def test_unknown_kid_without_a_new_key_is_rejected(jwks_server: JwksServer) -> None:
    jwks_server.keys = [public_jwk(signing_key("RS256"), "k1")]
    verifier, clock = jwks_verifier(jwks_server, ("RS256",))
    await verifier.verify(sign("RS256", claims(), kid="k1"))
    clock.advance(31)
    stranger = signing_key("RS256", "stranger")
    error = await rejected(verifier, sign("RS256", claims(), key=stranger, kid="k2"))
    assert "matches no accepted key" in error.message
    assert jwks_server.hits == 2  # it did look again, once


async def test_unknown_kids_hit_the_server_once_per_interval(jwks_server: JwksServer) -> None:
    jwks_server.keys = [public_jwk(signing_key("EdDSA"), "k1")]
    jwks_server.delay = 0.05
    verifier, clock = jwks_verifier(jwks_server, ("EdDSA",))
    stranger = signing_key("EdDSA", "stranger")
    forged = [sign("EdDSA", claims(), key=stranger, kid=f"kid-{i}") for i in range(20)]

    async def attempt(token: str) -> str:
        try:
            await verifier.verify(token)
        except AuthError as error:
            return error.code
        return "accepted"

    # The first fetch, raced by 20: one request.
    assert await asyncio.gather(*map(attempt, forged)) == ["invalid_token"] * 20
    assert jwks_server.hits == 1

    # Still inside the interval: no request at all.
    clock.advance(29)
    assert await asyncio.gather(*map(attempt, forged)) == ["invalid_token"] * 20
    assert jwks_server.hits == 1

    # The interval has passed: 20 concurrent misses share one refetch.
    clock.advance(1)
    assert await asyncio.gather(*map(attempt, forged)) == ["invalid_token"] * 20
    assert jwks_server.hits == 2
    await verifier.verify(sign("EdDSA", claims(), kid="k1"))
    assert jwks_server.hits == 2


async def test_same_kid_is_matched_by_key_type(jwks_server: JwksServer) -> None:
    rsa_key, ec_key = signing_key("RS256"), signing_key("ES256")
    jwks_server.keys = [public_jwk(rsa_key, "shared"), public_jwk(ec_key, "shared")]
    verifier, _ = jwks_verifier(jwks_server, ("RS256", "ES256"))
    await verifier.verify(sign("RS256", claims(), key=rsa_key, kid="shared"))
    await verifier.verify(sign("ES256", claims(), key=ec_key, kid="shared"))
    await rejected(verifier, sign("ES256", claims(), key=signing_key("ES256", "x"), kid="shared"))


async def test_symmetric_keys_in_a_jwks_are_never_used(jwks_server: JwksServer) -> None:
    published_secret = b"p" * 32
    jwks_server.keys = [{"kty": "oct", "k": b64url(published_secret), "kid": "h"}]
    verifier, _ = jwks_verifier(jwks_server, ("HS256", "RS256"), hs256_secret=HS_SECRET)
    await rejected(verifier, sign("HS256", claims(), key=published_secret, kid="h"))
    await verifier.verify(sign("HS256", claims(), kid="h"))  # the configured secret still works


async def test_cached_keys_expire(jwks_server: JwksServer) -> None:
    jwks_server.keys = [public_jwk(signing_key("RS256"), "k1")]
    verifier, clock = jwks_verifier(jwks_server, ("RS256",), jwks_cache_seconds=300)
    token = sign("RS256", claims(), kid="k1")
    await verifier.verify(token)
    clock.advance(299)
    await verifier.verify(token)
    assert jwks_server.hits == 1
    clock.advance(1)
    await verifier.verify(token)
    assert jwks_server.hits == 2


async def test_refresh_failure_keeps_the_cached_keys(jwks_server: JwksServer) -> None:
    jwks_server.keys = [public_jwk(signing_key("RS256"), "k1")]
    verifier, clock = jwks_verifier(jwks_server, ("RS256",))
    token = sign("RS256", claims(), kid="k1")
    await verifier.verify(token)
    jwks_server.status = 503
    clock.advance(301)
    await verifier.verify(token)
    assert jwks_server.hits == 2
    await verifier.verify(token)  # the failed attempt counts for the rate limit too
    assert jwks_server.hits == 2


async def test_jwks_larger_than_the_cap_is_refused(jwks_server: JwksServer) -> None:
    keys = json.dumps({"keys": [public_jwk(signing_key("RS256"), "k1")]}).encode()
    jwks_server.body = keys[:-1] + b" " * (1 << 20) + b"}"
    verifier, _ = jwks_verifier(jwks_server, ("RS256",))
    await rejected(verifier, sign("RS256", claims(), kid="k1"), "keys_unavailable")


@pytest.mark.parametrize("body", [b"<html>", b'{"keys": 5}', b"[]"])
async def test_jwks_that_is_not_a_key_set_is_refused(jwks_server: JwksServer, body: bytes) -> None:
    jwks_server.body = body
    verifier, _ = jwks_verifier(jwks_server, ("RS256",))
    await rejected(verifier, sign("RS256", claims(), kid="k1"), "keys_unavailable")


async def test_unreachable_jwks_is_keys_unavailable() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = JwtSettings(
        ISSUER, AUDIENCE, ("RS256",), jwks_url=f"http://127.0.0.1:{port}/jwks.json"
    )
    verifier = JwtVerifier(settings)
    await rejected(verifier, sign("RS256", claims(), kid="k1"), "keys_unavailable")


async def test_configured_keys_still_work_when_the_jwks_is_down() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = settings_for("RS256", jwks_url=f"http://127.0.0.1:{port}/jwks.json")
    await JwtVerifier(settings).verify(sign("RS256", claims()))

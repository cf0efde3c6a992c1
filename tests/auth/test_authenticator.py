"""The Authorization header → Principal, with a real key store and a real HS256 verifier."""

from __future__ import annotations

import time

import jwt
import pytest

from render_gateway.auth.authenticator import Authenticator
from render_gateway.auth.jwt_verifier import JwtSettings, JwtVerifier
from render_gateway.auth.principal import AuthError, Principal
from render_gateway.stores.sqlite_keys import SqliteApiKeyStore

SECRET = b"authenticator-test-secret-0123456789"
VERIFIER = JwtVerifier(JwtSettings("https://issuer.example", "render", ("HS256",), SECRET))


def token(sub: str = "cust_jwt", plan: str = "pro") -> str:
    now = int(time.time())
    claims = {"sub": sub, "plan": plan, "iss": "https://issuer.example", "aud": "render",
              "iat": now, "exp": now + 300}  # fmt: skip
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def refused(authenticator: Authenticator, header: str | None, code: str) -> None:
    with pytest.raises(AuthError) as caught:
        await authenticator.authenticate(header)
    assert caught.value.code == code, caught.value.message
    if header and len(header) > 8:
        assert header.split()[-1] not in str(caught.value)  # the credential is never echoed


async def test_api_key_is_routed_to_the_store(key_store: SqliteApiKeyStore) -> None:
    key, secret = await key_store.create("cust_key", "team")
    principal = await Authenticator(key_store, VERIFIER).authenticate(f"Bearer {secret}")
    assert principal == Principal("cust_key", "team", "api_key", key_id=key.key_id)


async def test_jwt_is_routed_to_the_verifier(key_store: SqliteApiKeyStore) -> None:
    principal = await Authenticator(key_store, VERIFIER).authenticate(f"Bearer {token()}")
    assert principal == Principal("cust_jwt", "pro", "jwt")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_scheme_is_case_insensitive(key_store: SqliteApiKeyStore, scheme: str) -> None:
    _, secret = await key_store.create("cust_key", "team")
    authenticator = Authenticator(key_store, VERIFIER)
    assert (await authenticator.authenticate(f"{scheme} {secret}")).method == "api_key"
    assert (await authenticator.authenticate(f"{scheme}   {token()} ")).method == "jwt"


@pytest.mark.parametrize("header", [None, "", "   "])
async def test_missing_credentials(key_store: SqliteApiKeyStore, header: str | None) -> None:
    await refused(Authenticator(key_store, VERIFIER), header, "missing_credentials")
    anonymous = Authenticator(key_store, VERIFIER, anonymous_plan="free")
    assert await anonymous.authenticate(header) == Principal("anonymous", "free", "anonymous")


async def test_bad_credentials_are_refused_even_with_anonymous_access(
    key_store: SqliteApiKeyStore,
) -> None:
    anonymous = Authenticator(key_store, VERIFIER, anonymous_plan="free")
    await refused(anonymous, "Bearer rk_" + "0" * 40, "invalid_api_key")
    await refused(anonymous, f"Bearer {token()}x", "invalid_token")
    await refused(anonymous, "Basic dXNlcjpwYXNzd29yZA==", "invalid_authorization")
    await refused(anonymous, "Bearer garbage", "invalid_credentials")


async def test_revoked_key_is_refused(key_store: SqliteApiKeyStore) -> None:
    key, secret = await key_store.create("cust_key", "team")
    await key_store.revoke(key.key_id)
    await refused(Authenticator(key_store, VERIFIER), f"Bearer {secret}", "revoked_api_key")


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNzd29yZA==",
        "Token rk_0123456789012345678901234567890123456789",
        "Bearer",
        "Bearer ",
        "Bearer two tokens",
        "Bearer: rk_0123456789012345678901234567890123456789",
        "rk_0123456789012345678901234567890123456789",
    ],
)
async def test_wrong_scheme_or_shape(key_store: SqliteApiKeyStore, header: str) -> None:
    await refused(Authenticator(key_store, VERIFIER), header, "invalid_authorization")


@pytest.mark.parametrize(
    ("bearer", "code"),
    [
        ("hello", "invalid_credentials"),
        ("a.b", "invalid_credentials"),
        ("a.b.c.d", "invalid_credentials"),
        ("sk_live_0123456789abcdef", "invalid_credentials"),
        ("a.b.c", "invalid_token"),
        ("..", "invalid_token"),
        ("rk_short", "invalid_api_key"),
        ("rk_0123456789012345678901234567890123456789", "invalid_api_key"),
        ("rk_a.b.c", "invalid_api_key"),  # the prefix decides: it is a (malformed) API key
    ],
)
async def test_garbage_tokens(key_store: SqliteApiKeyStore, bearer: str, code: str) -> None:
    await refused(Authenticator(key_store, VERIFIER), f"Bearer {bearer}", code)


async def test_jwt_without_a_verifier_is_unsupported(key_store: SqliteApiKeyStore) -> None:
    authenticator = Authenticator(key_store, None)
    await refused(authenticator, f"Bearer {token()}", "unsupported_credentials")
    _, secret = await key_store.create("cust_key", "team")
    assert (await authenticator.authenticate(f"Bearer {secret}")).customer_id == "cust_key"


def test_anonymous_plan_is_validated(key_store: SqliteApiKeyStore) -> None:
    with pytest.raises(ValueError, match="anonymous_plan"):
        Authenticator(key_store, None, anonymous_plan="free plan")

"""The pure rules of API keys every store follows: the secret's shape, its digest, refusals.
(Stores' behaviour is in tests/contracts/test_keys.py; bytes on disk in tests/stores/.)"""

from __future__ import annotations

import hashlib
import re

import pytest

from render_gateway.auth.api_keys import API_KEY_PREFIX, ApiKey, active_key, new_key, secret_digest
from render_gateway.auth.principal import AuthError


def test_a_new_key_has_a_fresh_secret_and_id() -> None:
    made = [new_key("cust_1", "pro", now=1234.5) for _ in range(50)]
    for key, secret in made:
        assert secret.startswith(API_KEY_PREFIX)
        assert re.fullmatch(r"rk_[0-9A-Za-z]{40}", secret)
        assert re.fullmatch(r"key_[0-9A-Za-z]{12}", key.key_id)
        assert key == ApiKey(key.key_id, "cust_1", "pro", 1234.5, None)
    assert len({secret for _, secret in made}) == 50
    assert len({key.key_id for key, _ in made}) == 50


@pytest.mark.parametrize("bad", ["", "a" * 129, "has space", "ünïcode", "a|b"])
def test_a_new_key_needs_valid_names_and_does_not_echo_them(bad: str) -> None:
    with pytest.raises(ValueError, match="customer id") as caught:
        new_key(bad, "pro", now=0.0)
    if bad:  # the empty string is in every message
        assert bad not in str(caught.value)
    with pytest.raises(ValueError, match="plan"):
        new_key("cust_1", bad, now=0.0)


def test_the_digest_is_the_sha256_of_the_secret() -> None:
    _, secret = new_key("cust_1", "pro", now=0.0)
    assert secret_digest(secret) == hashlib.sha256(secret.encode()).digest()


@pytest.mark.parametrize(
    "malformed", ["", "rk_", "rk_" + "a" * 39, "rk_" + "a" * 41, "RK_" + "a" * 40, "rk_" + "é" * 40]
)
def test_what_cannot_be_a_secret_has_no_digest(malformed: str) -> None:
    with pytest.raises(AuthError) as caught:
        secret_digest(malformed)
    assert (caught.value.code, caught.value.message) == (
        "invalid_api_key",
        "the API key is malformed",
    )


def test_only_a_found_unrevoked_key_is_active() -> None:
    key = ApiKey("key_0123456789ab", "cust_1", "pro", 1.0)
    assert active_key(key) is key
    with pytest.raises(AuthError) as unknown:
        active_key(None)
    assert unknown.value.code == "invalid_api_key"
    with pytest.raises(AuthError) as revoked:
        active_key(ApiKey("key_0123456789ab", "cust_1", "pro", 1.0, revoked_at=2.0))
    assert revoked.value.code == "revoked_api_key"
    assert "key_0123456789ab" in revoked.value.message

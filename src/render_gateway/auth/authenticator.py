"""From an ``Authorization`` header to a Principal: API key, JWT, or (if allowed) anonymous."""

from __future__ import annotations

from render_gateway.auth.api_keys import API_KEY_PREFIX, ApiKeyStore
from render_gateway.auth.jwt_verifier import JwtVerifier
from render_gateway.auth.names import check_name
from render_gateway.auth.principal import AuthError, Principal

ANONYMOUS_CUSTOMER = "anonymous"


def bearer_token(authorization_header: str) -> str:
    """The token of ``Bearer <token>`` (scheme case-insensitive, RFC 7235); AuthError otherwise."""
    parts = authorization_header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        # Never quote the header back: it may hold a credential sent under the wrong scheme.
        raise AuthError(
            "invalid_authorization", "the Authorization header must be 'Bearer <api key or JWT>'"
        )
    return parts[1]


class Authenticator:
    def __init__(
        self,
        api_keys: ApiKeyStore,
        jwt: JwtVerifier | None,
        anonymous_plan: str | None = None,
    ) -> None:
        self._api_keys = api_keys
        self._jwt = jwt
        self._anonymous_plan = (
            check_name("anonymous_plan", anonymous_plan) if anonymous_plan is not None else None
        )

    async def authenticate(self, authorization_header: str | None) -> Principal:
        if authorization_header is None or not authorization_header.strip():
            return self._anonymous()
        # A credential that is present but bad is refused even when anonymous access is on:
        # the caller meant to be someone, and silently downgrading would hide their mistake.
        token = bearer_token(authorization_header)
        if token.startswith(API_KEY_PREFIX):
            key = await self._api_keys.authenticate(token)
            return Principal(key.customer_id, key.plan, "api_key", key.key_id)
        if token.count(".") == 2:
            if self._jwt is None:
                raise AuthError("unsupported_credentials", "this gateway does not accept JWTs")
            return await self._jwt.verify(token)
        raise AuthError("invalid_credentials", "the bearer token is neither an API key nor a JWT")

    def _anonymous(self) -> Principal:
        if self._anonymous_plan is None:
            raise AuthError("missing_credentials", "send 'Authorization: Bearer <api key or JWT>'")
        return Principal(ANONYMOUS_CUSTOMER, self._anonymous_plan, "anonymous")

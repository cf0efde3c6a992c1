"""``redis://`` API keys: shared by every gateway replica and the CLI, read fresh on every check.

How the data lies in Redis (``ns`` is the namespace, ``render:keys`` by default):

* ``ns:key:<key_id>`` — a hash: ``customer_id``, ``plan``, ``created_at`` and, once revoked,
  ``revoked_at`` (times as the float's repr, so they round-trip exactly);
* ``ns:digest:<hex sha256 of the secret>`` — a string holding the key id: the lookup index.
  Only the digest is ever stored, never the secret;
* ``ns:ids`` — a sorted set of every key id, scored by ``ns:seq`` (a counter), so ``list``
  gives keys in creation order, as the SQLite store's rowid does.

Every operation is one Lua script, so it runs atomically on the server: ``create`` writes the
index, the hash and the list entry together (the index with NX, so a digest never points at two
keys); ``revoke`` tests for ``revoked_at`` and sets it in one step (two replicas revoking at once
get one True); ``authenticate`` and ``list`` read a consistent snapshot. Nothing is cached, so a
revocation made through any handle takes effect on the very next ``authenticate`` everywhere.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from render_gateway.auth.api_keys import ApiKey, active_key, new_key, secret_digest
from render_gateway.stores.redis_client import key

_CREATE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') == false then return 0 end
redis.call('HSET', KEYS[2], 'customer_id', ARGV[2], 'plan', ARGV[3], 'created_at', ARGV[4])
redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[1])
return 1
"""

# As _CREATE, only while ns:ids is empty: 2 (a key exists, nothing written), else as _CREATE.
_CREATE_FIRST = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX') == false then return 0 end
redis.call('HSET', KEYS[2], 'customer_id', ARGV[2], 'plan', ARGV[3], 'created_at', ARGV[4])
redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[1])
return 1
"""

_AUTHENTICATE = """
local key_id = redis.call('GET', KEYS[1])
if not key_id then return false end
local fields = redis.call('HMGET', ARGV[1] .. key_id, 'customer_id', 'plan', 'created_at',
                          'revoked_at')
return {key_id, fields[1], fields[2], fields[3], fields[4]}
"""

_LIST = """
local rows = {}
for _, key_id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local fields = redis.call('HMGET', ARGV[1] .. key_id, 'customer_id', 'plan', 'created_at',
                            'revoked_at')
  rows[#rows + 1] = {key_id, fields[1], fields[2], fields[3], fields[4]}
end
return rows
"""

_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1])
"""


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    raise TypeError(f"unexpected reply from Redis: {value!r}")


def _row_to_key(row: Sequence[object]) -> ApiKey:
    key_id, customer_id, plan, created_at, revoked_at = row
    return ApiKey(
        _text(key_id),
        _text(customer_id),
        _text(plan),
        float(_text(created_at)),
        None if revoked_at is None else float(_text(revoked_at)),
    )


class RedisApiKeyStore:
    def __init__(
        self,
        client: aioredis.Redis,
        clock: Callable[[], float] = time.time,
        namespace: str = key("keys"),
    ) -> None:
        self._client, self._clock, self._ns = client, clock, namespace
        self._create = client.register_script(_CREATE)
        self._create_first = client.register_script(_CREATE_FIRST)
        self._authenticate = client.register_script(_AUTHENTICATE)
        self._list = client.register_script(_LIST)
        self._revoke = client.register_script(_REVOKE)
        self._closed = False

    def _key(self, key_id: str) -> str:
        return f"{self._ns}:key:{key_id}"

    async def create(self, customer_id: str, plan: str) -> tuple[ApiKey, str]:
        made = await self._create_with(self._create, customer_id, plan)
        assert made is not None  # _CREATE never answers "a key exists"
        return made

    async def create_first(self, customer_id: str, plan: str) -> tuple[ApiKey, str] | None:
        return await self._create_with(self._create_first, customer_id, plan)

    async def _create_with(
        self, script: AsyncScript, customer_id: str, plan: str
    ) -> tuple[ApiKey, str] | None:
        self._check_open()
        made, secret = new_key(customer_id, plan, self._clock())
        digest = secret_digest(secret).hex()
        created = await script(
            keys=[
                f"{self._ns}:digest:{digest}",
                self._key(made.key_id),
                f"{self._ns}:ids",
                f"{self._ns}:seq",
            ],
            args=[made.key_id, made.customer_id, made.plan, repr(made.created_at)],
        )
        if int(created) == 2:
            return None  # create_first: the store has a key already
        if int(created) != 1:  # 238 random bits: a repeated secret is not going to happen
            raise RuntimeError("a new API key's secret digest is already stored")
        return made, secret

    async def authenticate(self, secret: str) -> ApiKey:
        digest = secret_digest(secret).hex()
        self._check_open()
        row = await self._authenticate(
            keys=[f"{self._ns}:digest:{digest}"], args=[f"{self._ns}:key:"]
        )
        return active_key(None if row is None else _row_to_key(row))

    async def list(self) -> builtins.list[ApiKey]:
        self._check_open()
        rows = await self._list(keys=[f"{self._ns}:ids"], args=[f"{self._ns}:key:"])
        return [_row_to_key(row) for row in rows]

    async def revoke(self, key_id: str) -> bool:
        self._check_open()
        now = self._clock()
        revoked = await self._revoke(keys=[self._key(key_id)], args=[repr(now)])
        return int(revoked) == 1

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the API key store is closed")

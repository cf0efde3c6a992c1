"""One contract for the API key store (stores/keys.py), run against every implementation.

``sqlite`` is a real file under tmp_path, ``memory`` this process's store, ``redis`` a real
redis-server (the module's ``redis_server``), each test under a fresh key namespace. The tests
use the Protocol's operations only. ``replica`` is a second handle on the same keys, as the CLI
or another gateway process opens it: for SQLite a second store on the same file, for Redis a
second client on the same namespace, for memory (one process is the whole deployment) the same
object. What only one implementation does (bytes on disk, file modes) is in tests/stores/.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from render_gateway.auth.api_keys import ApiKey
from render_gateway.auth.principal import AuthError
from render_gateway.stores.keys import ApiKeyStore, open_key_store
from render_gateway.stores.redis_client import key as redis_key
from render_gateway.stores.redis_client import open_redis
from render_gateway.stores.redis_keys import RedisApiKeyStore
from render_gateway.stores.urls import StoreUrlError

from support.redis_server import RedisServer

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
Clock = Callable[[], float]


@dataclass
class Backend:
    open: Callable[[Clock], ApiKeyStore]
    # A second handle on the same keys, as another process has it (the caller closes it).
    replica: Callable[[ApiKeyStore], ApiKeyStore]


def _sqlite_backend(tmp_path: Path) -> Backend:
    url = f"sqlite://{tmp_path / 'private' / 'keys.db'}"
    return Backend(
        open=lambda clock: open_key_store(url, clock=clock),
        replica=lambda _store: open_key_store(url),
    )


def _memory_backend(tmp_path: Path) -> Backend:
    return Backend(
        open=lambda clock: open_key_store("memory://", clock=clock), replica=lambda store: store
    )


def _redis_backend(url: str) -> Backend:
    namespace = redis_key("keys", uuid.uuid4().hex)  # this test's keys only: list() starts empty
    return Backend(
        open=lambda clock: RedisApiKeyStore(open_redis(url), clock, namespace),
        replica=lambda _store: RedisApiKeyStore(open_redis(url), namespace=namespace),
    )


BACKENDS = {"sqlite": _sqlite_backend, "memory": _memory_backend}


@pytest.fixture(params=[*sorted(BACKENDS), "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "redis":
        return _redis_backend(request.getfixturevalue("redis_server").url)
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def ticks() -> Iterator[int]:
    return itertools.count(1000)


@pytest.fixture
async def store(backend: Backend, ticks: Iterator[int]) -> AsyncIterator[ApiKeyStore]:
    opened = backend.open(lambda: float(next(ticks)))
    yield opened
    await opened.close()


@pytest.fixture
async def replica(backend: Backend, store: ApiKeyStore) -> AsyncIterator[ApiKeyStore]:
    other = backend.replica(store)
    yield other
    if other is not store:
        await other.close()


async def expect_auth_error(store: ApiKeyStore, secret: str, code: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        await store.authenticate(secret)
    assert caught.value.code == code
    if secret:  # the empty string is in every message
        assert secret not in str(caught.value)
    return caught.value


# ---------------------------------------------------------------------------- create, check


async def test_create_then_authenticate(store: ApiKeyStore) -> None:
    key, secret = await store.create("cust_1", "pro")
    assert re.fullmatch(r"rk_[0-9A-Za-z]{40}", secret)
    assert re.fullmatch(r"key_[0-9A-Za-z]{12}", key.key_id)
    assert (key.customer_id, key.plan, key.revoked_at) == ("cust_1", "pro", None)
    assert await store.authenticate(secret) == key


async def test_every_key_gets_its_own_secret_and_id(store: ApiKeyStore) -> None:
    created = [await store.create("cust_1", "pro") for _ in range(20)]
    assert len({secret for _, secret in created}) == 20
    assert len({key.key_id for key, _ in created}) == 20
    for key, secret in created:
        assert await store.authenticate(secret) == key


async def test_unknown_secret_is_refused(store: ApiKeyStore) -> None:
    await store.create("cust_1", "pro")
    stranger = "rk_" + "".join(BASE62[i % 62] for i in range(7, 47))
    await expect_auth_error(store, stranger, "invalid_api_key")


@pytest.mark.parametrize("position", [3, 4, 20, 41, 42])
async def test_one_changed_character_is_refused(store: ApiKeyStore, position: int) -> None:
    _, secret = await store.create("cust_1", "pro")
    changed = BASE62[(BASE62.index(secret[position]) + 1) % 62]
    tampered = secret[:position] + changed + secret[position + 1 :]
    await expect_auth_error(store, tampered, "invalid_api_key")
    await store.authenticate(secret)  # the real one still works


async def test_malformed_secrets_are_refused(store: ApiKeyStore) -> None:
    _, secret = await store.create("cust_1", "pro")
    for malformed in (
        "",
        "rk_",
        secret[:-1],
        secret + "0",
        secret + "\n",
        " " + secret,
        secret.upper(),
        "RK_" + secret[3:],
        secret[:-1] + "é",
        secret[:-1] + "-",
    ):
        await expect_auth_error(store, malformed, "invalid_api_key")


@pytest.mark.parametrize(
    "bad",
    ["", "a" * 129, "has space", "semi;colon", "quote'", "slash/", "new\nline", "ünïcode", "a|b"],
)
async def test_invalid_customer_ids_and_plans_are_rejected(store: ApiKeyStore, bad: str) -> None:
    with pytest.raises(ValueError, match="customer id"):
        await store.create(bad, "pro")
    with pytest.raises(ValueError, match="plan"):
        await store.create("cust_1", bad)
    assert await store.list() == []


async def test_valid_names_at_the_edges_are_accepted(store: ApiKeyStore) -> None:
    for name in ("a", "x" * 128, "org:team.user@example.com", "A-Z_0-9"):
        key, secret = await store.create(name, name)
        assert await store.authenticate(secret) == key


# ---------------------------------------------------------------------------- revoke, list


async def test_revoked_key_is_refused(store: ApiKeyStore) -> None:
    key, secret = await store.create("cust_1", "pro")
    other, other_secret = await store.create("cust_1", "pro")
    assert await store.revoke(key.key_id) is True
    error = await expect_auth_error(store, secret, "revoked_api_key")
    assert key.key_id in error.message
    assert await store.revoke(key.key_id) is False  # once only
    assert await store.revoke("key_doesnotexist") is False
    assert await store.authenticate(other_secret) == other


async def test_list_shows_every_key_oldest_first_with_revoked_at(store: ApiKeyStore) -> None:
    assert await store.list() == []
    first, _ = await store.create("cust_1", "pro")  # the clock reads 1000, 1001, ...
    second, _ = await store.create("cust_2", "free")
    third, _ = await store.create("cust_0", "pro")
    assert await store.revoke(first.key_id)
    assert await store.list() == [
        ApiKey(first.key_id, "cust_1", "pro", created_at=1000.0, revoked_at=1003.0),
        ApiKey(second.key_id, "cust_2", "free", created_at=1001.0, revoked_at=None),
        ApiKey(third.key_id, "cust_0", "pro", created_at=1002.0, revoked_at=None),
    ]


async def test_revocation_by_another_handle_is_seen_at_once(
    store: ApiKeyStore, replica: ApiKeyStore
) -> None:
    # The CLI revokes through its own handle while the gateway keeps serving.
    key, secret = await store.create("cust_1", "pro")
    assert await store.authenticate(secret) == key
    assert await replica.authenticate(secret) == key
    assert await replica.revoke(key.key_id)
    await expect_auth_error(store, secret, "revoked_api_key")
    assert [listed.key_id for listed in await store.list()] == [key.key_id]


# ------------------------------------------------------------------------------ concurrency


async def test_concurrent_authentications(store: ApiKeyStore) -> None:
    created = [await store.create(f"cust_{i}", "pro") for i in range(5)]
    results = await asyncio.gather(
        *(store.authenticate(secret) for _ in range(10) for _, secret in created)
    )
    assert results == [key for _ in range(10) for key, _ in created]


async def test_concurrent_creates_and_revokes(store: ApiKeyStore) -> None:
    created = await asyncio.gather(*(store.create(f"cust_{i}", "pro") for i in range(20)))
    assert {key.key_id for key in await store.list()} == {key.key_id for key, _ in created}
    # Each key revoked twice at once: exactly one of the two revokes it.
    revoked = await asyncio.gather(*(store.revoke(key.key_id) for key, _ in created * 2))
    assert sum(revoked) == 20
    for _, secret in created:
        await expect_auth_error(store, secret, "revoked_api_key")


# ------------------------------------------------------------------------- the first key


async def test_create_first_makes_a_key_only_in_an_empty_store(store: ApiKeyStore) -> None:
    made = await store.create_first("admin", "admin")
    assert made is not None
    key, secret = made
    assert (await store.authenticate(secret)) == key
    assert await store.create_first("admin", "admin") is None
    assert await store.list() == [key]


async def test_create_first_counts_revoked_keys(store: ApiKeyStore) -> None:
    key, _ = await store.create("cust_1", "pro")
    assert await store.revoke(key.key_id)
    assert await store.create_first("admin", "admin") is None
    assert [listed.key_id for listed in await store.list()] == [key.key_id]


async def test_of_eight_concurrent_first_creates_on_separate_handles_one_makes_a_key(
    backend: Backend, store: ApiKeyStore
) -> None:
    # Eight replicas starting together on one empty store, each with its own handle (its own
    # SQLite connection, its own Redis client; memory: one process, one store).
    handles = [backend.replica(store) for _ in range(8)]
    try:
        made = await asyncio.gather(*(h.create_first("admin", "admin") for h in handles))
    finally:
        for handle in handles:
            if handle is not store:
                await handle.close()
    created = [outcome for outcome in made if outcome is not None]
    assert len(created) == 1
    key, secret = created[0]
    assert await store.list() == [key]
    assert (await store.authenticate(secret)) == key


async def test_create_first_rejects_a_bad_name_and_writes_nothing(store: ApiKeyStore) -> None:
    with pytest.raises(ValueError, match="plan"):
        await store.create_first("admin", "not a plan!")
    assert await store.list() == []


# --------------------------------------------------------------------------------- lifecycle


async def test_a_closed_store_refuses_work(store: ApiKeyStore) -> None:
    key, secret = await store.create("cust_1", "pro")
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.list()
    with pytest.raises(RuntimeError, match="closed"):
        await store.authenticate(secret)
    with pytest.raises(RuntimeError, match="closed"):
        await store.create("cust_1", "pro")
    with pytest.raises(RuntimeError, match="closed"):
        await store.revoke(key.key_id)
    with pytest.raises(RuntimeError, match="closed"):
        await store.create_first("admin", "admin")


@pytest.mark.parametrize("url", ["memroy://", "file:///tmp/keys", "postgres://127.0.0.1"])
def test_an_unknown_scheme_names_the_setting(url: str) -> None:
    with pytest.raises(
        StoreUrlError, match=r"gateway\.stores\.keys.*sqlite://, memory://, redis://, rediss://"
    ):
        open_key_store(url)


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
async def test_a_redis_url_opens_the_redis_store(scheme: str) -> None:
    store = open_key_store(f"{scheme}://127.0.0.1:1/0")  # opening does no I/O
    assert isinstance(store, RedisApiKeyStore)
    await store.close()


async def test_the_redis_store_keeps_digests_never_secrets(redis_server: RedisServer) -> None:
    namespace = redis_key("keys", uuid.uuid4().hex)
    store = RedisApiKeyStore(open_redis(redis_server.url), namespace=namespace)
    made, secret = await store.create("cust_1", "pro")
    client = open_redis(redis_server.url)
    try:
        stored: list[bytes] = [name async for name in client.scan_iter(match=f"{namespace}:*")]
        for name in list(stored):
            kind = await client.type(name)
            if kind == b"hash":
                stored += (await client.hgetall(name)).values()
            elif kind == b"string":
                stored.append(await client.get(name))
        assert not any(secret.encode() in value for value in stored)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        assert await client.get(f"{namespace}:digest:{digest}") == made.key_id.encode()
    finally:
        await client.aclose()
        await store.close()

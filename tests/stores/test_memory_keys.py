"""What only the ``memory://`` key store shows: it holds digests, never secrets, as keys.db
does. (The contract is tests/contracts/test_keys.py.)"""

from __future__ import annotations

import hashlib
import pickle

from render_gateway.stores.keys import open_key_store
from render_gateway.stores.memory_keys import MemoryApiKeyStore


async def test_the_store_holds_digests_never_secrets() -> None:
    store = open_key_store("memory://")
    assert isinstance(store, MemoryApiKeyStore)
    created = [await store.create(f"cust_{i}", "pro") for i in range(5)]
    await store.authenticate(created[0][1])
    # Everything the store holds, as bytes: what a dump of the process would show of it.
    held = pickle.dumps(vars(store))
    for _, secret in created:
        assert secret.encode() not in held
        assert secret[3:].encode() not in held
        assert hashlib.sha256(secret.encode()).digest() in held  # the right bytes to search
    await store.close()

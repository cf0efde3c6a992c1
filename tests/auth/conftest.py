"""A real API key store on a SQLite file under the test's tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from render_gateway.stores.sqlite_keys import SqliteApiKeyStore


@pytest_asyncio.fixture
async def key_store(tmp_path: Path) -> AsyncIterator[SqliteApiKeyStore]:
    store = SqliteApiKeyStore(tmp_path / "auth" / "api_keys.db")
    yield store
    await store.close()

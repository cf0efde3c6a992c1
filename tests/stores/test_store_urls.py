"""Which URL each stateful concern is opened from: the embedded defaults under the data dir,
``[gateway.shared] url`` for what replicas share, and per-concern overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from render_gateway.config import GatewayConfig, SharedConfig, StoresConfig
from render_gateway.stores.urls import SHARED_CONCERNS, StoreUrlError, store_urls


def test_unset_everything_is_embedded_under_the_data_dir(tmp_path: Path) -> None:
    urls = store_urls(GatewayConfig(data_dir=tmp_path))
    assert urls["jobs"] == urls["usage"] == f"sqlite://{tmp_path.resolve() / 'jobs.db'}"
    assert urls["limits"] == urls["budgets"] == urls["events"] == "memory://"
    assert urls["assets"] == f"file://{tmp_path.resolve() / 'assets'}"


def test_the_shared_redis_takes_the_shared_concerns_and_an_override_wins(tmp_path: Path) -> None:
    shared = "redis://127.0.0.1:7000/2"
    config = GatewayConfig(
        data_dir=tmp_path,
        shared=SharedConfig(url=shared),
        stores=StoresConfig(events="memory://"),
    )
    urls = store_urls(config)
    # Leases stay per process while the jobs (and their usage stream) do: a singleton must
    # consume the stream of the process it runs in.
    assert {name for name in SHARED_CONCERNS if urls[name] == shared} == (
        set(SHARED_CONCERNS) - {"events", "leases"}
    )
    assert urls["events"] == "memory://"
    assert urls["leases"] == f"sqlite://{tmp_path.resolve() / 'leases.db'}"
    assert urls["jobs"].startswith("sqlite://")


def test_with_the_jobs_on_the_shared_redis_the_leases_follow(tmp_path: Path) -> None:
    shared = "redis://127.0.0.1:7000/2"
    config = GatewayConfig(
        data_dir=tmp_path,
        shared=SharedConfig(url=shared),
        stores=StoresConfig(jobs=shared),
    )
    urls = store_urls(config)
    assert all(urls[name] == shared for name in SHARED_CONCERNS)


def test_a_usage_stream_apart_from_the_jobs_is_refused(tmp_path: Path) -> None:
    config = GatewayConfig(data_dir=tmp_path, stores=StoresConfig(usage="memory://"))
    with pytest.raises(StoreUrlError, match=r"gateway\.stores\.usage"):
        store_urls(config)


def test_the_shared_url_must_be_redis() -> None:
    with pytest.raises(ValidationError, match="url"):
        SharedConfig(url="http://127.0.0.1:6380")

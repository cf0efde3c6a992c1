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


def test_the_shared_redis_takes_every_shared_concern_and_an_override_wins(
    tmp_path: Path,
) -> None:
    shared = "redis://127.0.0.1:7000/2"
    config = GatewayConfig(
        data_dir=tmp_path,
        shared=SharedConfig(url=shared),
        stores=StoresConfig(events="memory://"),
    )
    urls = store_urls(config)
    assert {name for name in SHARED_CONCERNS if urls[name] == shared} == (
        set(SHARED_CONCERNS) - {"events"}
    )
    assert urls["events"] == "memory://"
    # The assets are objects: a shared directory or S3, never the Redis.
    assert urls["assets"] == f"file://{tmp_path.resolve() / 'assets'}"


def test_jobs_kept_embedded_keep_their_stream_and_leases_per_process(tmp_path: Path) -> None:
    shared = "redis://127.0.0.1:7000/2"
    jobs = f"sqlite://{tmp_path.resolve() / 'mine.db'}"
    config = GatewayConfig(
        data_dir=tmp_path,
        shared=SharedConfig(url=shared),
        stores=StoresConfig(jobs=jobs),
    )
    urls = store_urls(config)
    # A singleton must consume the stream of the process it runs in.
    assert urls["jobs"] == urls["usage"] == jobs
    assert urls["leases"] == f"sqlite://{tmp_path.resolve() / 'leases.db'}"
    assert urls["keys"] == urls["budgets"] == shared


def test_a_usage_stream_apart_from_the_jobs_is_refused(tmp_path: Path) -> None:
    config = GatewayConfig(data_dir=tmp_path, stores=StoresConfig(usage="memory://"))
    with pytest.raises(StoreUrlError, match=r"gateway\.stores\.usage"):
        store_urls(config)


def test_the_shared_url_must_be_redis() -> None:
    with pytest.raises(ValidationError, match="url"):
        SharedConfig(url="http://127.0.0.1:6380")


def test_the_backend_slots_are_per_process_alone_and_shared_with_the_redis(
    tmp_path: Path,
) -> None:
    # One process: its pool's own count (memory); replicas: one count on the shared Redis.
    assert store_urls(GatewayConfig(data_dir=tmp_path))["slots"] == "memory://"
    shared = "redis://127.0.0.1:7000/2"
    config = GatewayConfig(data_dir=tmp_path, shared=SharedConfig(url=shared))
    assert store_urls(config)["slots"] == shared
    # An operator may keep each replica counting for itself.
    per_replica = GatewayConfig(
        data_dir=tmp_path,
        shared=SharedConfig(url=shared),
        stores=StoresConfig(slots="memory://"),
    )
    assert store_urls(per_replica)["slots"] == "memory://"

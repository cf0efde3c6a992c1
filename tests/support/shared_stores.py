"""Gateway replicas on one Redis for end-to-end tests: the config every replica of a test
reads (the shared Redis, one chDB path, one CAS and assets directory, the one reference
worker), and the secrets the second replica takes from the first's data dir."""

from __future__ import annotations

import shutil
from pathlib import Path

from support.gateway import ONE_WORKER_CONFIG

SHARED_STORES = """
drain_seconds = 1

[gateway.shared]
url = "{redis}"

[gateway.metering]
url = "chdb://{shared}/usage.chdb"
flush_interval_seconds = 0.2

[gateway.audit]
cas_url = "file://{shared}/cas"

[gateway.stores]
assets = "file://{shared}/assets"
"""
# What each data dir would otherwise make its own: the second replica gets the first's.
SECRETS = ("asset_url_secret", "webhook_secret", "audit/log.key")


def replica_config(worker_url: str, redis_url: str, shared: Path, extra: str = "") -> str:
    """The one-worker config with the shared stores (``extra`` follows them: more lines of
    ``[gateway.stores]``, or further sections)."""
    base = ONE_WORKER_CONFIG.format(worker=worker_url)
    head, rest = base.split("\n[[gateway.backends]]", 1)
    stores = SHARED_STORES.format(redis=redis_url, shared=shared)
    return head + stores + extra + "\n[[gateway.backends]]" + rest


def copy_secrets(source: Path, target: Path) -> None:
    for name in SECRETS:
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)

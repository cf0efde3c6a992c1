"""Store URLs: each stateful concern is chosen by one URL in ``[gateway.stores]``.

``memory://`` (this process only), ``sqlite:///abs/path.db`` (embedded, durable), for assets
``file:///abs/dir`` or ``s3://bucket/prefix``, and ``redis://`` / ``rediss://`` for every concern
but the assets. ``[gateway.shared] url`` moves every shared concern to one Redis; unset settings
fall back to the embedded store under the data dir (``default_store_urls``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from render_gateway.config import GatewayConfig

CONCERNS = (
    "jobs", "limits", "budgets", "events", "keys", "webhooks", "assets", "usage", "leases", "slots",
)  # fmt: skip


class StoreUrlError(ValueError):
    """A store URL this build cannot open; the message names the setting and what is accepted."""


@dataclass(frozen=True)
class StoreUrl:
    scheme: str
    path: Path | None  # sqlite and file URLs
    url: str

    def sqlite_path(self) -> Path:
        """The path of a ``sqlite://`` or ``file://`` URL."""
        assert self.path is not None
        return self.path


def parse_store_url(setting: str, url: str, accepted: tuple[str, ...]) -> StoreUrl:
    """Split ``url`` and check its scheme is one of ``accepted``; StoreUrlError naming
    ``setting`` otherwise (a typo never falls back to a default)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in accepted:
        shown = ", ".join(f"{s}://" for s in accepted)
        raise StoreUrlError(f"gateway.stores.{setting}: {url!r} is not one of {shown}")
    path: Path | None = None
    if scheme in ("sqlite", "file"):
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise StoreUrlError(
                f"gateway.stores.{setting}: {url!r} needs an absolute path ({scheme}:///abs/path)"
            )
        path = Path(unquote(parts.path))  # %-escapes (a space in a path) decoded
    return StoreUrl(scheme, path, url)


def default_store_urls(data_dir: Path) -> dict[str, str]:
    """The embedded default of each concern under ``data_dir`` (one process)."""
    data = data_dir.resolve()

    def url(scheme: str, name: str) -> str:
        return f"{scheme}://{quote(str(data / name))}"

    jobs = url("sqlite", "jobs.db")
    return {
        "jobs": jobs,
        "limits": "memory://",
        "budgets": "memory://",
        "events": "memory://",
        "keys": url("sqlite", "keys.db"),
        "webhooks": url("sqlite", "webhooks.db"),
        "assets": url("file", "assets"),
        "usage": jobs,
        "leases": url("sqlite", "leases.db"),
        "slots": "memory://",
    }


# What ``[gateway.shared] url`` moves to Redis: everything but the assets (objects: a shared
# ``file://`` directory or ``s3://``). The usage stream commits with the jobs, so it moves with
# them; the leases follow the jobs (a singleton consumes the stream of the jobs it sees). The
# backend slots count each backend's capacity once across the replicas that send it runs.
SHARED_CONCERNS = (
    "jobs", "usage", "limits", "budgets", "events", "keys", "webhooks", "leases", "slots",
)  # fmt: skip


def store_urls(config: GatewayConfig) -> dict[str, str]:
    """Each concern's URL: the configured one, or the shared Redis for the shared concerns when
    ``[gateway.shared] url`` is set, or the embedded default under the data dir."""
    defaults = default_store_urls(Path(config.data_dir))
    configured = config.stores.model_dump()
    if config.shared.url:
        defaults.update({name: config.shared.url for name in SHARED_CONCERNS})
        jobs = configured.get("jobs") or config.shared.url
        if not jobs.startswith(("redis:", "rediss:")) and not configured.get("leases"):
            # The singletons consume this process's own usage stream while the jobs are not
            # shared: their leases stay per process, or a replica's records would never be
            # written (another replica would hold the metering lease for a stream it cannot see).
            defaults["leases"] = default_store_urls(Path(config.data_dir))["leases"]
    urls = {name: configured.get(name) or default for name, default in defaults.items()}
    urls["usage"] = configured.get("usage") or urls["jobs"]  # the stream is the jobs store's
    if configured.get("usage") and configured["usage"] != urls["jobs"]:
        raise StoreUrlError(
            "gateway.stores.usage: the usage stream commits with the jobs (a record exists iff "
            f"its request ended), so it must be the jobs store ({urls['jobs']!r}) or unset"
        )
    return urls

"""Store URLs: each stateful concern is chosen by one URL in ``[gateway.stores]``.

``memory://`` (this process only), ``sqlite:///abs/path.db`` (embedded, durable), and for assets
``file:///abs/dir`` or ``s3://bucket/prefix``. The next issue adds ``redis://``. Unset settings
fall back to the embedded store under the data dir (``default_store_urls``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

CONCERNS = ("jobs", "limits", "budgets", "events", "keys", "webhooks", "assets", "usage", "leases")


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
    }

"""What replicas sharing one Redis must agree on, checked at start.

Two replicas with their own data dirs and the defaults would otherwise each keep their own
Merkle log (two CAS directories: a forked audit log), split the usage between two embedded chDB
directories, sign webhooks and asset URLs with two keys. So, when the jobs store is shared
(``redis://``), the first replica to start records in Redis what all must share: the resolved
metering URL, audit CAS URL and assets URL, the audit origin, and fingerprints of the three
secrets (a hash of the log's public key, HMACs of a fixed text under the two others: never a
secret itself). Each later replica compares and refuses to start, naming every setting that
differs. The record lives ``RECORD_SECONDS`` and each live replica renews it every third of
that: to change what replicas share, stop them all, wait that long, and start them with the new
settings (the first one to start records them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson

from render_gateway.application.asset_urls import AssetUrlSigner
from render_gateway.application.webhooks import WebhookSecret
from render_gateway.audit.signed_note import NoteSigner
from render_gateway.auth.private_file import read_private_text
from render_gateway.config import GatewayConfig
from render_gateway.metering.store import default_usage_url
from render_gateway.signing_keys import public_key_bytes
from render_gateway.stores.cluster_record import ClusterRecord, open_cluster_record
from render_gateway.stores.objects import default_cas_url
from render_gateway.stores.redis_client import use_password
from render_gateway.stores.urls import SHARED_CONCERNS, store_urls

log = logging.getLogger(__name__)

RECORD_SECONDS = 60.0
REDIS_SCHEMES = ("redis://", "rediss://")

# Setting → what the message calls it. Settings in URLs are shown; fingerprints are not.
_SHOWN = {
    "metering.url": "metering.url",
    "audit.cas_url": "audit.cas_url",
    "stores.assets": "stores.assets",
    "audit.origin": "audit.origin",
}
_SECRETS = {
    "audit.key_file": "the audit log's signing key",
    "webhooks.secret_file": "the webhook signing secret",
    "asset_url_secret_file": "the asset URL signing key",
}


class ClusterDisagrees(RuntimeError):
    """This replica's shared settings differ from those of the replicas already running."""


def use_shared_password(config: GatewayConfig) -> None:
    """Every Redis client this process opens from now on authenticates with the password in
    ``[gateway.shared] password_file`` (refused, naming the file, if others can read it)."""
    path = config.shared.password_file
    if path is None:
        use_password(None)
        return
    if not path.is_file():
        raise FileNotFoundError(f"gateway.shared.password_file: {path} does not exist")
    use_password(read_private_text(path))


def agreed_settings(
    config: GatewayConfig,
    data: Path,
    signer: NoteSigner,
    webhook_secret: WebhookSecret,
    asset_urls: AssetUrlSigner,
) -> dict[str, str]:
    """What every replica must share, as the names of the settings that choose it."""
    public = public_key_bytes(signer.private_key.public_key())
    urls = store_urls(config)
    # Every concern the replicas must share: one on memory:// (or its own SQLite file) among
    # replicas on Redis would keep its own budgets, limits, slots… unseen by the others.
    shared = {f"stores.{name}": without_password(urls[name]) for name in SHARED_CONCERNS}
    return {
        **shared,
        "metering.url": without_password(config.metering.url or default_usage_url(data)),
        "audit.cas_url": without_password(config.audit.cas_url or default_cas_url(data)),
        "stores.assets": without_password(urls["assets"]),
        "audit.origin": config.audit.origin,
        "audit.key_file": hashlib.sha256(public).hexdigest(),
        "webhooks.secret_file": webhook_secret.fingerprint(),
        "asset_url_secret_file": asset_urls.fingerprint(),
    }


def without_password(url: str) -> str:
    """``url`` with any password in it left out (``clickhouse://user:***@host``): the record
    lives in Redis and the refusal names the URL; a password is never written to either."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def differences(here: dict[str, str], running: dict[str, str]) -> list[str]:
    """One sentence per setting that differs, naming it. A setting the running replicas did
    not record (they are an older version) is not compared."""
    found = []
    for setting, value in here.items():
        theirs = running.get(setting)
        if theirs is None or theirs == value:
            continue  # equal, or not recorded by the older replicas running (a rolling upgrade)
        if setting in _SECRETS:
            found.append(
                f"{_SECRETS[setting]} (gateway.{setting}) differs from the one the replicas "
                "already running use; replicas must share it"
            )
        else:
            found.append(
                f"{_SHOWN.get(setting, setting)} is {value} here but {theirs} on the replicas "
                "already running; replicas must share it"
            )
    return found


@dataclass
class ClusterAgreement:
    record: ClusterRecord
    value: str
    ttl_seconds: float = RECORD_SECONDS

    async def hold(self) -> None:
        """Claim or renew the record; ClusterDisagrees if the replicas running hold another."""
        held = await self.record.hold(self.value, self.ttl_seconds)
        if held is None:
            return
        try:
            running = orjson.loads(held)
        except orjson.JSONDecodeError:
            running = {}
        problems = differences(orjson.loads(self.value), running)
        raise ClusterDisagrees(
            "; ".join(problems or ["the shared settings differ from the replicas' running"])
        )

    async def keep(self) -> None:
        """Renew the record every third of its lifetime until cancelled (then close)."""
        try:
            while True:
                await asyncio.sleep(self.ttl_seconds / 3)
                try:
                    await self.hold()
                except ClusterDisagrees as exc:
                    # Only if the record lapsed while this replica could not reach Redis and
                    # another started with other settings: say so loudly, keep serving.
                    log.error("replicas disagree: %s", exc)
                except Exception as exc:  # Redis away for a while: renew on the next round
                    log.warning("cannot renew the cluster agreement record: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await self.record.close()


async def enforce_agreement(
    config: GatewayConfig,
    data: Path,
    signer: NoteSigner,
    webhook_secret: WebhookSecret,
    asset_urls: AssetUrlSigner,
) -> asyncio.Task[None] | None:
    """With a shared (Redis) jobs store: check this replica against the record (refusing with
    ClusterDisagrees), and return the task that keeps renewing it (cancel it to stop). None
    when the jobs store is not shared: a lone process has nobody to agree with."""
    jobs_url = store_urls(config)["jobs"]
    if not jobs_url.startswith(REDIS_SCHEMES):
        return None
    settings = agreed_settings(config, data, signer, webhook_secret, asset_urls)
    value = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS).decode()
    agreement = ClusterAgreement(open_cluster_record(jobs_url), value)
    try:
        await agreement.hold()
    except BaseException:
        await agreement.record.close()
        raise
    return asyncio.create_task(agreement.keep(), name="cluster-agreement")

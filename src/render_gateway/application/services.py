"""Everything the gateway's routes use, built from the configuration in one place."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from render_gateway.application.asset_urls import AssetUrlSigner
from render_gateway.application.events import JobEventHub
from render_gateway.application.job_views import job_view
from render_gateway.application.local_worker import DEMO_MODEL, LocalWorker, start_local_worker
from render_gateway.application.offered_catalog import OfferedCatalog
from render_gateway.application.reconciler import Reconciler
from render_gateway.application.scheduler import JobRunner
from render_gateway.application.webhooks import WebhookSecret, WebhookSender
from render_gateway.audit.batcher import AttestationBatcher
from render_gateway.audit.keys import load_signer
from render_gateway.audit.log import open_audit_log
from render_gateway.audit.objects import ObjectStore, default_cas_url, open_object_store
from render_gateway.audit.proof_index import INDEX_FILE as PROOF_INDEX_FILE
from render_gateway.audit.proof_index import ProofIndex
from render_gateway.audit.signed_note import NoteSigner
from render_gateway.auth.api_keys import SqliteApiKeyStore
from render_gateway.auth.authenticator import Authenticator
from render_gateway.auth.jwt_verifier import JwtSettings, JwtVerifier
from render_gateway.auth.private_file import read_private_text
from render_gateway.catalog import Catalog, CatalogModel
from render_gateway.config import GatewayConfig, JwtConfig
from render_gateway.core.jobs import Job
from render_gateway.core.months import month_of
from render_gateway.inference.kserve_client import KServeClient
from render_gateway.metering.budgets import Amount, BudgetLedger
from render_gateway.metering.estimates import CostEstimator
from render_gateway.metering.estimates_file import EstimatesFile
from render_gateway.metering.from_config import budget_limits, price_table
from render_gateway.metering.meter import Meter
from render_gateway.metering.store import (
    UsageStore,
    UsageStoreError,
    UsageStoreLocked,
    default_usage_url,
    open_usage_store,
)
from render_gateway.metering.writer import UsageWriter
from render_gateway.scheduling.backend_pool import BackendPool, BackendSpec
from render_gateway.scheduling.breaker import BreakerConfig
from render_gateway.scheduling.dispatch import Dispatcher, RetryPolicy
from render_gateway.scheduling.token_bucket import BucketConfig, RateLimiter
from render_gateway.signing_keys import key_id as node_key_id
from render_gateway.stores.assets import AssetStore
from render_gateway.stores.jobs import RecoveryPolicy
from render_gateway.stores.object_assets import open_asset_store
from render_gateway.stores.sqlite_jobs import SqliteJobStore
from render_gateway.stores.usage_log import UsageLog

log = logging.getLogger(__name__)

# The demo model as the catalog shows it when serve starts its own worker.
DEMO_CATALOG = CatalogModel(
    "image", "sd", "tiny", ("t2i", "i2i", "edit"), aliases=("render/tiny-sd-demo",),
    default_format="512",
)  # fmt: skip


def jwt_settings(config: JwtConfig) -> JwtSettings:
    secret = config.hs256_secret_file.read_bytes().strip() if config.hs256_secret_file else None
    return JwtSettings(
        issuer=config.issuer,
        audience=config.audience,
        algorithms=tuple(config.algorithms),
        hs256_secret=secret,
        public_keys_pem=tuple(p.read_text() for p in config.public_key_files),
        jwks_url=config.jwks_url,
        leeway_seconds=config.leeway_seconds,
        plan_claim=config.plan_claim,
        default_plan=config.default_plan,
    )


async def _restore_budgets(store: SqliteJobStore, meter: Meter) -> None:
    """After a restart: this month's billable usage so far, and the reservations of every job
    that was admitted but has not finished."""
    month = month_of(time.time())  # once: a restart at a month's edge must not mix two
    for usage in await store.usage_log.month_usage(month):
        meter.ledger.add_spent(
            usage.customer_id, month, Amount(usage.gpu_seconds, usage.cost_nanos)
        )
    for job in await store.unsettled():
        if isinstance(reservation := job.extra.get("reservation"), dict):
            meter.restore(job.id, job.customer_id, {"plan": job.extra.get("plan"), **reservation})


async def _start_usage_writer(
    config: GatewayConfig, data: Path, usage_log: UsageLog
) -> UsageWriter:
    metering = config.metering
    url = metering.url or default_usage_url(data)
    password = read_private_text(metering.password_file) if metering.password_file else None

    def open_store() -> UsageStore:
        return open_usage_store(url, retention_days=metering.retention_days, password=password)

    writer = UsageWriter(
        usage_log, open_store, metering.batch_rows, metering.flush_interval_seconds
    )
    try:
        writer.store = await asyncio.to_thread(open_store)
    except UsageStoreLocked:
        raise  # another process owns the embedded store: refuse to start, saying so
    except UsageStoreError as exc:  # a server that is down: records wait in the log
        log.warning("usage store %s unavailable at start, will retry: %s", url, exc)
    writer.start()
    return writer


@dataclass(frozen=True)
class AuditParts:
    objects: ObjectStore
    signer: NoteSigner
    batcher: AttestationBatcher
    proof_index: ProofIndex


def _start_batcher(config: GatewayConfig, data: Path, usage_log: UsageLog) -> AuditParts:
    """The cold path. Records carry the node key their claim was verified with when the
    request settled, so the batcher needs no keys of its own and may seal at once."""
    audit = config.audit
    objects = open_object_store(audit.cas_url or default_cas_url(data))
    signer = load_signer(data, audit.origin)
    proof_index = ProofIndex(data / PROOF_INDEX_FILE)

    open_log = functools.partial(open_audit_log, objects, signer, audit.origin)
    batcher = AttestationBatcher(
        usage_log, open_log, audit.batch_records, audit.batch_seconds,
        on_open=proof_index.catch_up, on_append=proof_index.add,
    )  # fmt: skip
    batcher.start()
    return AuditParts(objects, signer, batcher, proof_index)


@dataclass
class GatewayServices:
    config: GatewayConfig
    store: SqliteJobStore
    assets: AssetStore
    asset_urls: AssetUrlSigner  # signs the expiring URLs through which others read assets
    api_keys: SqliteApiKeyStore
    authenticator: Authenticator
    catalog: Catalog
    pool: BackendPool
    limiter: RateLimiter[tuple[str, str]]
    events: JobEventHub
    session: aiohttp.ClientSession
    dispatcher: Dispatcher
    runner: JobRunner
    webhooks: WebhookSender
    notify_settled: Callable[[Job], None]
    finished_jobs: Counter[str]  # jobs settled since start, by status
    meter: Meter
    usage_writer: UsageWriter
    audit: AuditParts
    node_keys: dict[str, bytes]  # backend node key id → raw Ed25519 public key (from /v2/node)
    reconciler: Reconciler
    local_worker: LocalWorker | None = None
    estimates: EstimatesFile | None = None  # the cost models, saved again on stop
    _probe: asyncio.Task[None] | None = field(default=None, repr=False)
    _keyed: set[str] = field(default_factory=set, repr=False)  # backends asked for their key
    # The configured catalog narrowed to what the backends report they serve: ``catalog``
    # follows it as backends are read (see offered_catalog.py).
    _offered: OfferedCatalog | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    async def start(cls, config: GatewayConfig) -> GatewayServices:
        """Open every store and start every loop; with no backend configured, start the demo
        worker first. A start that fails after that stops the worker again (no orphan)."""
        data = Path(config.data_dir)
        await asyncio.to_thread(data.mkdir, parents=True, exist_ok=True)
        local_worker = None
        if not config.backends and config.local_demo_worker:
            local_worker = await start_local_worker(data)
        try:
            return await cls._start(config, data, local_worker)
        except BaseException:
            if local_worker is not None:
                await local_worker.stop()
            raise

    @classmethod
    async def _start(
        cls, config: GatewayConfig, data: Path, local_worker: LocalWorker | None
    ) -> GatewayServices:
        backends = [
            BackendSpec(b.id, b.endpoint, b.family, b.models, b.capacity, b.type, b.streaming)
            for b in config.backends
        ]
        catalog_entries = [
            CatalogModel(
                m.modality,
                m.family,
                m.model,
                tuple(m.tasks),
                m.status,
                tuple(m.aliases),
                m.backend_type,
                m.default_format,
            )
            for m in config.models
        ]
        if local_worker is not None:
            backends = [
                BackendSpec("local-demo", local_worker.endpoint, "sd", {"tiny": DEMO_MODEL})
            ]
            catalog_entries = catalog_entries or [DEMO_CATALOG]
        catalog = Catalog(catalog_entries)
        for plan in config.plans.values():
            BucketConfig(plan.rate_capacity, plan.rate_refill_per_second)  # validates early
        store = SqliteJobStore(data / "jobs.db", synchronous=config.sqlite_synchronous)
        recovery = await store.open(RecoveryPolicy(config.recovery), config.max_job_retries)
        log.info(
            "job store open: %d queued, %d requeued, %d failed after a restart",
            recovery.queued, len(recovery.requeued), len(recovery.failed),
        )  # fmt: skip
        estimator = CostEstimator(config.reservation_gpu_seconds)
        estimates = EstimatesFile(data / "estimates.json", estimator)
        await asyncio.to_thread(estimates.load)
        meter = Meter(
            price_table(config),
            BudgetLedger(budget_limits(config)),
            estimator,
            on_learned=estimates.learned,
        )
        await _restore_budgets(store, meter)
        usage_writer = await _start_usage_writer(config, data, store.usage_log)
        node_keys: dict[str, bytes] = {}
        meter.node_keys = node_keys  # claims are checked with them as each request settles
        audit = await asyncio.to_thread(_start_batcher, config, data, store.usage_log)

        def on_record() -> None:
            usage_writer.notify()
            audit.batcher.notify()

        meter.on_record = on_record
        api_keys = SqliteApiKeyStore(data / "keys.db")
        jwt = JwtVerifier(jwt_settings(config.jwt)) if config.jwt else None
        authenticator = Authenticator(api_keys, jwt, config.anonymous_plan)
        pool = BackendPool(backends, BreakerConfig(**config.breaker.model_dump()))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        clients = {spec.id: KServeClient(session, spec.endpoint) for spec in backends}
        dispatcher = Dispatcher(
            pool, lambda spec: clients[spec.id], RetryPolicy(**config.retry.model_dump())
        )
        events = JobEventHub()
        assets = open_asset_store(config.stores.assets or (data / "assets").absolute().as_uri())
        asset_urls = await asyncio.to_thread(
            AssetUrlSigner.load_or_create, data / "asset_url_secret", config.asset_url_ttl_seconds
        )
        webhook_secret = await asyncio.to_thread(
            WebhookSecret.load_or_create, data / "webhook_secret"
        )
        webhooks = WebhookSender(
            webhook_secret,
            config.webhooks.policy(),
        )

        finished: Counter[str] = Counter()

        def notify(job: Job) -> None:
            """Count the settled job, settle its budget reservation, wake the usage writer, send
            its webhook (signed; never waits for the receiver)."""
            finished[job.status.value] += 1
            meter.settled(job.id, job.extra.get("usage"))
            if job.webhook:
                progress, _ = events.progress(job.id)
                webhooks.send(
                    job.webhook,
                    job_view(job, None, progress, None, asset_url=asset_urls.url),
                    event_id=f"{job.id}.{job.status.value}",
                )

        runner = JobRunner(
            store, pool, dispatcher, assets, events, meter, on_settled=notify,
            asset_url=asset_urls.url,
        )  # fmt: skip
        reconciler = Reconciler(
            config.reconcile, lambda: usage_writer.store, audit.objects, audit.signer, webhooks
        )
        plans = config.plans

        def bucket_for(key: tuple[str, str]) -> BucketConfig:
            # Limiter keys are (plan, customer), so a customer's bucket follows its plan.
            plan = plans.get(key[0]) or plans["default"]
            return BucketConfig(plan.rate_capacity, plan.rate_refill_per_second)

        services = cls(
            config, store, assets, asset_urls, api_keys, authenticator, catalog, pool,
            RateLimiter(bucket_for), events, session, dispatcher, runner, webhooks, notify,
            finished, meter, usage_writer, audit, node_keys, reconciler, local_worker,
            estimates,
        )  # fmt: skip
        services._offered = OfferedCatalog(catalog)
        await services._probe_once(clients)  # know who is up before the first dispatch
        runner.start()
        reconciler.start()
        services._probe = asyncio.create_task(services._probe_backends(clients))
        return services

    async def _probe_once(self, clients: dict[str, KServeClient]) -> None:
        results = await asyncio.gather(*(client.ready() for client in clients.values()))
        for backend_id, healthy in zip(clients, results, strict=True):
            backend = self.pool.backends[backend_id]
            # Before a backend is used, and again each time it comes back (a restarted node
            # may present a new key): a claim is checked with the key when it settles.
            if healthy and (backend_id not in self._keyed or not backend.healthy):
                await self._learn_node_key(backend_id, clients[backend_id])
            if healthy and self._offered and not self._offered.knows(backend_id):
                await self._offered.read_backend(backend.spec, clients[backend_id])
                self.catalog = self._offered.current
            if healthy != backend.healthy:
                log.warning("backend %s is now %s", backend_id, "healthy" if healthy else "down")
                backend.healthy = healthy
                if healthy:
                    self.runner.wake()

    async def _learn_node_key(self, backend_id: str, client: KServeClient) -> None:
        """Remember the backend's node key so its signed claims can be checked when each
        request settles (the record carries the key that verified it, and the audit log seals
        that); a key whose id is not its hash is refused. Asked again at the next probe until
        the backend answers (a plain Triton server never does: it signs no claims)."""
        found = await client.node_key()
        if found is None:
            return
        self._keyed.add(backend_id)
        claimed_id, raw = found
        try:
            actual_id = node_key_id(Ed25519PublicKey.from_public_bytes(raw))
        except ValueError:
            actual_id = None
        if actual_id != claimed_id:
            log.error("backend %s sent a node key whose id does not match it; ignored", backend_id)
            return
        self.node_keys[claimed_id] = raw

    async def _probe_backends(self, clients: dict[str, KServeClient], every: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every)
            await self._probe_once(clients)

    def begin_stop(self) -> None:
        """The stop has begun (SIGTERM): claim no more jobs from now on. Signal-handler safe."""
        self.runner.stop_claiming()

    async def stop(self) -> None:
        """Drain the runner (running jobs settle within ``drain_seconds`` of the stop's start,
        the rest are requeued unspent), then close everything. A second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        settled, requeued = await self.runner.drain(self.config.drain_seconds)
        log.info("drained: %d running jobs settled, %d requeued", settled, requeued)
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.runner.stop()
        if self.estimates is not None:
            await asyncio.to_thread(self.estimates.save)
        await self.reconciler.stop()
        await asyncio.to_thread(self.usage_writer.stop, 5.0)  # before the log's store closes
        await asyncio.to_thread(self.audit.batcher.stop, 5.0)
        await self.webhooks.drain(5.0)
        await self.webhooks.close()
        await self.session.close()
        await self.store.close()
        await self.api_keys.close()
        if self.local_worker is not None:
            await self.local_worker.stop()

"""The composition root: every store opened from its URL, every use case built on them, and the
roles this process runs (``serve --roles``).

Nothing here decides anything about a request: that is the use cases' (admission, job_cases,
sync_run, settle) and the scheduler's. This module only connects them, starts what runs in the
background, and stops it again in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from render_gateway.application.admission import Admission
from render_gateway.application.asset_inputs import AssetInputs
from render_gateway.application.asset_urls import AssetUrlSigner
from render_gateway.application.audit_verifications import AuditVerifications
from render_gateway.application.cluster_agreement import enforce_agreement, use_shared_password
from render_gateway.application.job_cases import JobCases
from render_gateway.application.local_worker import DEMO_MODEL, LocalWorker, start_local_worker
from render_gateway.application.metering_role import MeteringRole
from render_gateway.application.offered_catalog import OfferedCatalog
from render_gateway.application.reconciler import Reconciler
from render_gateway.application.scheduler import JobRunner, RunLeases
from render_gateway.application.settle import Settlement
from render_gateway.application.singleton import SingletonRole, process_holder_id
from render_gateway.application.sync_run import RunNow
from render_gateway.application.uploads import Uploads
from render_gateway.application.usage_holder import (
    UsageReadLocator,
    derived_advertise_url,
    holder_with_url,
)
from render_gateway.application.webhooks import WebhookSecret, WebhookSender
from render_gateway.audit.batcher import AttestationBatcher
from render_gateway.audit.keys import load_signer
from render_gateway.audit.log import open_audit_log
from render_gateway.audit.proof_index import INDEX_FILE as PROOF_INDEX_FILE
from render_gateway.audit.proof_index import ProofIndex
from render_gateway.audit.signed_note import NoteSigner
from render_gateway.auth.authenticator import Authenticator
from render_gateway.auth.jwt_verifier import JwtSettings, JwtVerifier
from render_gateway.catalog import Catalog, CatalogModel
from render_gateway.config import BackendConfig, GatewayConfig, JwtConfig
from render_gateway.core.budgets import Amount
from render_gateway.core.months import month_of
from render_gateway.inference.backend import InferenceBackend
from render_gateway.inference.kserve_client import KServeClient
from render_gateway.inference.kserve_grpc_client import GRPC_SCHEME, KServeGrpcClient, close_all
from render_gateway.metering.estimates import CostEstimator
from render_gateway.metering.estimates_file import EstimatesFile
from render_gateway.metering.from_config import budget_limits, price_table
from render_gateway.metering.loop_lag import LoopLag
from render_gateway.metering.meter import Meter
from render_gateway.metering.read_side import UsageQueries
from render_gateway.metering.store import (
    default_usage_url,
    parse_usage_url,
)
from render_gateway.metering.writer import GROUP as USAGE_GROUP
from render_gateway.metering.writer import UsageWriter
from render_gateway.scheduling.backend_pool import BackendPool, BackendSpec
from render_gateway.scheduling.breaker import BreakerConfig
from render_gateway.scheduling.dispatch import Dispatcher, RetryPolicy
from render_gateway.scheduling.token_bucket import BucketConfig
from render_gateway.signing_keys import key_id as node_key_id
from render_gateway.stores.assets import AssetStore
from render_gateway.stores.backend_slots import SlotKeeper, open_backend_slots
from render_gateway.stores.budgets import BudgetStore, open_budget_store
from render_gateway.stores.events import EventBus, open_event_bus
from render_gateway.stores.jobs import JobStore, open_job_store
from render_gateway.stores.keys import ApiKeyStore, open_key_store
from render_gateway.stores.leases import LeaseStore, open_lease_store
from render_gateway.stores.limits import RateLimits, open_rate_limits
from render_gateway.stores.object_assets import open_asset_store
from render_gateway.stores.objects import ObjectStore, default_cas_url, open_object_store
from render_gateway.stores.redis_client import RedisProbe
from render_gateway.stores.urls import store_urls
from render_gateway.stores.usage_log import BUDGET_GROUP, UsageStream
from render_gateway.stores.webhooks import WebhookDeliveries, open_webhook_store

log = logging.getLogger(__name__)

# The demo model as the catalog shows it when serve starts its own worker.
DEMO_CATALOG = CatalogModel(
    "image", "sd", "tiny", ("t2i", "i2i", "edit"), aliases=("render/tiny-sd-demo",),
    default_format="512",
)  # fmt: skip
# How long a singleton role's lease lasts without renewal (renewed every third of it).
ROLE_LEASE_SECONDS = 15.0


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


@dataclass
class Stores:
    """Every stateful concern, each behind its Protocol, opened from its URL."""

    jobs: JobStore
    limits: RateLimits
    budgets: BudgetStore
    events: EventBus
    keys: ApiKeyStore
    webhooks: WebhookDeliveries
    assets: AssetStore
    leases: LeaseStore
    slots: SlotKeeper  # the backends' slots shared by the replicas, renewed while held
    # One PING client per Redis URL the stores use, and the concerns on it (readiness).
    redis_probes: dict[str, tuple[RedisProbe, list[str]]] = field(default_factory=dict)

    @classmethod
    def open(cls, config: GatewayConfig) -> Stores:
        urls = store_urls(config)
        probes: dict[str, tuple[RedisProbe, list[str]]] = {}
        for concern, url in urls.items():
            if url.startswith(("redis://", "rediss://")):
                probes.setdefault(url, (RedisProbe(url), []))[1].append(concern)
        return cls(
            redis_probes=probes,
            jobs=open_job_store(
                urls["jobs"],
                synchronous=config.sqlite_synchronous,
                wait_replicas=config.shared.wait_replicas,
                wait_timeout_ms=config.shared.wait_timeout_ms,
            ),
            limits=open_rate_limits(urls["limits"]),
            budgets=open_budget_store(urls["budgets"]),
            events=open_event_bus(urls["events"]),
            keys=open_key_store(urls["keys"]),
            webhooks=open_webhook_store(urls["webhooks"]),
            assets=open_asset_store(urls["assets"]),
            leases=open_lease_store(urls["leases"]),
            slots=SlotKeeper(open_backend_slots(urls["slots"])),
        )

    async def reachable(self) -> dict[str, bool]:
        """Each concern held on Redis → whether its Redis answered PING just now (bounded:
        ``RedisProbe``); the embedded and in-process stores are not probed (always there)."""
        found: dict[str, bool] = {}
        probes = list(self.redis_probes.values())
        answers = await asyncio.gather(*(probe.reachable() for probe, _ in probes))
        for (_, concerns), answer in zip(probes, answers, strict=True):
            found.update(dict.fromkeys(concerns, answer))
        return found

    async def close(self) -> None:
        for probe, _ in self.redis_probes.values():
            with contextlib.suppress(Exception):
                await probe.close()
        await self.jobs.close()
        for closing in (self.limits, self.budgets, self.events, self.keys, self.webhooks,
                        self.leases, self.slots, self.assets):  # fmt: skip
            with contextlib.suppress(Exception):
                await closing.close()


UNFOLLOWED_AT_START = 1_000_000  # far above what a crash leaves (jobs ended within seconds)


async def restore_budgets(jobs: JobStore, meter: Meter) -> None:
    """After a restart: this month's billable usage so far, and the reservations of every job
    that was admitted but has not finished."""
    month = month_of(time.time())  # once: a restart at a month's edge must not mix two
    for usage in await jobs.usage_log.month_usage(month):
        await meter.add_spent(usage.customer_id, month, Amount(usage.gpu_seconds, usage.cost_nanos))
    for job in await jobs.unsettled():
        if isinstance(reservation := job.extra.get("reservation"), dict):
            plan = job.extra.get("plan")
            await meter.restore(job.id, job.customer_id, {"plan": plan, **reservation})
    # Jobs that ended before the restart with their follow-ups cut short: their records are in
    # the month's spend just added, so the sweep that runs those follow-ups must not add them
    # again (application/settle.py).
    for job in await jobs.unfollowed(float("inf"), UNFOLLOWED_AT_START):
        await meter.counted_already(job.id, job.customer_id, month)
    # Every record so far is in the month's spend now: the budgets' backstop must not settle
    # them again (this ledger is new and remembers no settled key).
    await asyncio.to_thread(_ack_all, jobs.usage_log, BUDGET_GROUP)


def _ack_all(usage_log: UsageStream, group: str) -> None:
    if (head := usage_log.head()) > usage_log.acked(group):
        usage_log.ack(group, head)


@dataclass
class AuditParts:
    """The cold path: the CAS and the log's key always; the batcher while this process holds
    the ``audit`` role."""

    objects: ObjectStore
    signer: NoteSigner
    proof_index: ProofIndex
    batcher: AttestationBatcher | None = None

    def new_batcher(self, config: GatewayConfig, usage_log: UsageStream) -> AttestationBatcher:
        """Records carry the node key their claim was verified with when the request settled,
        so the batcher needs no keys of its own and may seal at once."""
        audit = config.audit
        open_log = functools.partial(open_audit_log, self.objects, self.signer, audit.origin)
        return AttestationBatcher(
            usage_log, open_log, audit.batch_records, audit.batch_seconds,
            on_open=self.proof_index.catch_up, on_append=self.proof_index.add,
        )  # fmt: skip


def open_audit_parts(config: GatewayConfig, data: Path) -> AuditParts:
    audit = config.audit
    return AuditParts(
        open_object_store(audit.cas_url or default_cas_url(data)),
        load_signer(data, audit.origin, audit.key_file),
        ProofIndex(data / PROOF_INDEX_FILE),
    )


def backends_of(config: GatewayConfig, local_worker: LocalWorker | None) -> list[BackendSpec]:
    if local_worker is not None:
        return [BackendSpec("local-demo", local_worker.endpoint, "sd", {"tiny": DEMO_MODEL})]
    return [backend_spec(b) for b in config.backends]


def backend_spec(b: BackendConfig) -> BackendSpec:
    return BackendSpec(
        id=b.id, endpoint=b.endpoint, family=b.family, models=b.models, capacity=b.capacity,
        type=b.type, streaming=b.streaming, output=b.output, node_url=b.node_url,
    )  # fmt: skip


def backend_client(session: aiohttp.ClientSession, spec: BackendSpec) -> InferenceBackend:
    """The client for a backend's endpoint: gRPC for ``grpc://``, else HTTP (one session)."""
    if spec.endpoint.startswith(GRPC_SCHEME):
        keys = KServeClient(session, spec.node_url) if spec.node_url else None
        return KServeGrpcClient(spec.endpoint, spec.output, keys)
    return KServeClient(session, spec.endpoint, spec.output)


def catalog_of(config: GatewayConfig, local_worker: LocalWorker | None) -> Catalog:
    entries = [
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
        entries = entries or [DEMO_CATALOG]
    return Catalog(entries)


@dataclass
class GatewayServices:
    config: GatewayConfig
    stores: Stores
    pool: BackendPool
    session: aiohttp.ClientSession
    authenticator: Authenticator
    asset_urls: AssetUrlSigner  # signs the expiring URLs through which others read assets
    meter: Meter
    webhooks: WebhookSender
    settlement: Settlement
    runner: JobRunner
    job_cases: JobCases
    run_now: RunNow
    usage_queries: UsageQueries  # the read side: its own ClickHouse client
    asset_inputs: AssetInputs
    uploads: Uploads  # POST /uploads and its PUT
    audit: AuditParts
    reconciler: Reconciler
    clients: dict[str, InferenceBackend]
    node_keys: dict[str, bytes]  # backend node key id → raw Ed25519 public key (from /v2/node)
    local_worker: LocalWorker | None = None
    estimates: EstimatesFile | None = None  # the cost models, saved again on stop
    metering: MeteringRole | None = None  # its parts run while this process holds the lease
    usage_reads: UsageReadLocator | None = None  # here, or relayed to metering's holder
    # Backend id → the id of the node key it last presented (GET /backends shows it).
    backend_key_ids: dict[str, str] = field(default_factory=dict)
    audit_verifications: AuditVerifications = field(default_factory=AuditVerifications)
    queue_depth: dict[str, int] = field(default_factory=dict)  # refreshed for /metrics
    # Each lane's head's created_at (None: empty), refreshed with queue_depth.
    queue_oldest: dict[str, float | None] = field(default_factory=dict)
    _roles: list[SingletonRole] = field(default_factory=list, repr=False)
    _role_tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)
    _probe: asyncio.Task[None] | None = field(default=None, repr=False)
    _keyed: set[str] = field(default_factory=set, repr=False)  # backends asked for their key
    # The configured catalog narrowed to what the backends report they serve: ``catalog``
    # follows it as backends are read (see offered_catalog.py).
    _offered: OfferedCatalog | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    # Read by routes and metrics under their old names.
    @property
    def usage_writer(self) -> UsageWriter | None:
        """The hot path's writer while this process holds the metering role."""
        return self.metering.writer if self.metering is not None else None

    @property
    def store(self) -> JobStore:
        return self.stores.jobs

    @property
    def assets(self) -> AssetStore:
        return self.stores.assets

    @property
    def limits(self) -> RateLimits:
        return self.stores.limits

    @property
    def catalog(self) -> Catalog:
        assert self._offered is not None
        return self._offered.current

    @property
    def finished_jobs(self) -> dict[str, int]:
        return self.settlement.finished

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(self.config.roles)

    @classmethod
    async def start(cls, config: GatewayConfig) -> GatewayServices:
        """Open every store and start every loop of this process's roles; with no backend
        configured, start the demo worker first. A start that fails after that stops the
        worker again (no orphan)."""
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
        backends = backends_of(config, local_worker)
        catalog = catalog_of(config, local_worker)
        for plan in config.plans.values():
            BucketConfig(plan.rate_capacity, plan.rate_refill_per_second)  # validates early
        use_shared_password(config)  # before any Redis client is opened
        stores = Stores.open(config)
        opened = await stores.jobs.open()
        log.info(
            "job store open: %d queued, %d runs found unfinished", opened.queued,
            len(opened.orphaned),
        )  # fmt: skip
        estimator = CostEstimator(config.reservation_gpu_seconds)
        estimates = EstimatesFile(data / "estimates.json", estimator)
        await asyncio.to_thread(estimates.load)
        meter = Meter(
            price_table(config),
            stores.budgets,
            budget_limits(config),
            estimator,
            on_learned=estimates.learned,
        )
        if store_urls(config)["budgets"].startswith("memory:"):
            # An in-process ledger starts empty: rebuild it from this process's log. A shared,
            # durable budget store already holds it (adding again would count it twice).
            await restore_budgets(stores.jobs, meter)
        node_keys: dict[str, bytes] = {}
        meter.node_keys = node_keys  # claims are checked with them as each request settles
        audit = await asyncio.to_thread(open_audit_parts, config, data)
        jwt = JwtVerifier(jwt_settings(config.jwt)) if config.jwt else None
        authenticator = Authenticator(stores.keys, jwt, config.anonymous_plan)
        pool = BackendPool(backends, BreakerConfig(**config.breaker.model_dump()))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        clients = {spec.id: backend_client(session, spec) for spec in backends}
        dispatcher = Dispatcher(
            pool, lambda spec: clients[spec.id], RetryPolicy(**config.retry.model_dump()),
            slots=stores.slots,
        )  # fmt: skip
        # A secret replicas share is read from its file (never created); else the data dir's.
        asset_urls = await asyncio.to_thread(
            AssetUrlSigner.load_or_create, data / "asset_url_secret", config.asset_url_ttl_seconds,
            config.asset_url_secret_file,
        )  # fmt: skip
        webhook_secret = await asyncio.to_thread(
            WebhookSecret.load_or_create, data / "webhook_secret", config.webhooks.secret_file
        )
        webhooks = WebhookSender(webhook_secret, config.webhooks.policy(), store=stores.webhooks)
        settlement = Settlement(stores.jobs, stores.events, meter, webhooks, asset_urls.url)
        runner = JobRunner(
            stores.jobs, pool, dispatcher, stores.assets, stores.events, meter, settlement,
            RunLeases(process_holder_id()), requeue_lost_runs=config.recovery == "requeue",
            max_retries=config.max_job_retries, asset_url=asset_urls.url,
        )  # fmt: skip
        usage_queries = UsageQueries.for_config(config.metering, data)
        reconciler = Reconciler(
            config.reconcile, usage_queries.store_or_none, audit.objects, audit.signer, webhooks
        )
        offered = OfferedCatalog(catalog)
        admission = Admission(config, lambda: offered.current, pool, stores.limits, meter)
        job_cases = JobCases(
            config, admission, stores.jobs, stores.events, settlement, runner, pool, webhooks,
            asset_urls.url,
        )  # fmt: skip
        run_now = RunNow(admission, dispatcher, stores.assets, meter, settlement, asset_urls.url)
        services = cls(
            config, stores, pool, session, authenticator, asset_urls, meter, webhooks,
            settlement, runner, job_cases, run_now, usage_queries,
            AssetInputs(stores.assets, asset_urls),
            Uploads(stores.assets, asset_urls, config.upload_url_ttl_seconds,
                    config.upload_timeout_seconds),
            audit, reconciler, clients, node_keys,
            local_worker, estimates,
        )  # fmt: skip
        services._offered = offered
        # Replicas on one Redis must share their logs, usage store and keys: refused otherwise.
        agreement = await enforce_agreement(config, data, audit.signer, webhook_secret, asset_urls)
        services._role_tasks.extend([agreement] if agreement else [])  # cancelled by stop()
        loop_lag = LoopLag()  # how late progress events and cancels run: charged for ahead
        meter.loop_lag = loop_lag.worst
        services._role_tasks.append(asyncio.create_task(loop_lag.run(), name="loop-lag"))
        meter.on_record = services._on_record
        await services._probe_once()  # know who is up before the first dispatch
        await webhooks.start()
        if "scheduler" in services.roles:
            requeued, failed = await runner.recover(opened.orphaned)
            if opened.orphaned:
                log.info("after a restart: %d runs requeued, %d failed", requeued, failed)
            runner.start()
        await services._start_roles()
        services._probe = asyncio.create_task(services._probe_backends())
        return services

    def _on_record(self) -> None:
        """A usage record was committed: wake the consumers this process runs."""
        if self.metering is not None:
            self.metering.notify()
        if self.audit.batcher is not None:
            self.audit.batcher.notify()

    async def _start_roles(self) -> None:
        """The singletons: each runs only while this process holds its lease, so that with
        shared stores exactly one replica runs it (another takes over when its lease lapses)."""
        config = self.config
        advertise_url = config.advertise_url or derived_advertise_url(config.host, config.port)
        # The holder id also says where this process listens: the other replicas relay usage
        # reads to the metering lease's holder (application/usage_holder.py).
        holder = holder_with_url(process_holder_id(), advertise_url)
        usage_url = config.metering.url or default_usage_url(Path(config.data_dir))
        self.usage_reads = UsageReadLocator(
            self.stores.leases, holder, parse_usage_url(usage_url).scheme == "chdb",
            lambda: self.usage_writer is not None, "metering" in self.roles,
        )  # fmt: skip
        usage_log = self.stores.jobs.usage_log

        metering = self.metering = MeteringRole(
            self.config, usage_log, self.meter, self.stores.budgets, self.stores.jobs
        )

        async def start_audit() -> None:
            batcher = self.audit.new_batcher(self.config, usage_log)
            await asyncio.to_thread(batcher.start)
            self.audit.batcher = batcher

        async def stop_audit() -> None:
            batcher, self.audit.batcher = self.audit.batcher, None
            if batcher is not None:
                await asyncio.to_thread(batcher.stop, 5.0)

        async def start_reconciler() -> None:
            self.reconciler.start()

        async def stop_reconciler() -> None:
            await self.reconciler.stop()

        async def start_metering_and_reconciler() -> None:
            await metering.start()
            self.reconciler.start()

        async def stop_metering_and_reconciler() -> None:
            await self.reconciler.stop()
            await metering.stop()

        wanted = {
            "metering": (metering.start, metering.stop),
            "audit": (start_audit, stop_audit),
            "reconciler": (start_reconciler, stop_reconciler),
        }
        if "reconciler" in self.roles and parse_usage_url(usage_url).scheme == "chdb":
            # The reconciler reads the usage store, which with the embedded chDB only the
            # metering holder can open (a reconciler elsewhere would fail, or take the store's
            # lock from the replica that must write it): it runs as part of the metering role,
            # under its one lease.
            del wanted["reconciler"]
            if "metering" in self.roles:
                wanted["metering"] = (start_metering_and_reconciler, stop_metering_and_reconciler)
            else:
                log.warning("role reconciler skipped: with the embedded usage store it runs "
                            "only with the metering role")  # fmt: skip
        for name, (start, stop) in wanted.items():
            if name not in self.roles:
                continue
            role = SingletonRole(self.stores.leases, name, holder, ROLE_LEASE_SECONDS, start, stop)
            self._roles.append(role)
            # The first try is made now, so that a lone process starts with its roles running
            # (the embedded chDB refuses a second process at start, as before).
            await role.try_once()
            self._role_tasks.append(asyncio.create_task(role.run(), name=f"role-{name}"))

    def usage_lag(self) -> tuple[int, float]:
        """(records not yet in ClickHouse, age of the oldest in seconds). Blocking."""
        if self.usage_writer is not None:
            stats = self.usage_writer.refresh_stats()
            return stats.backlog, stats.lag_seconds
        pending, oldest = self.stores.jobs.usage_log.lag(USAGE_GROUP)
        return pending, 0.0 if oldest is None else max(0.0, time.time() - oldest)

    async def refresh_gauges(self) -> None:
        """What /metrics reads that lives in a store (and so must be awaited)."""
        snapshot = await self.stores.jobs.queue_snapshot()
        lanes = snapshot.lanes
        self.queue_depth = {lane: state.depth for lane, state in lanes.items()}
        self.queue_oldest = {lane: state.oldest_created_at for lane, state in lanes.items()}

    async def _probe_once(self) -> None:
        clients = self.clients
        results = await asyncio.gather(*(client.ready() for client in clients.values()))
        for backend_id, healthy in zip(clients, results, strict=True):
            backend = self.pool.backends[backend_id]
            # Before a backend is used, and again each time it comes back (a restarted node
            # may present a new key): a claim is checked with the key when it settles.
            if healthy and (backend_id not in self._keyed or not backend.healthy):
                await self._learn_node_key(backend_id, clients[backend_id])
            if healthy and self._offered and not self._offered.knows(backend_id):
                await self._offered.read_backend(backend.spec, clients[backend_id])
            if healthy != backend.healthy:
                log.warning("backend %s is now %s", backend_id, "healthy" if healthy else "down")
                backend.healthy = healthy
                if healthy:
                    self.runner.wake()

    async def _learn_node_key(self, backend_id: str, client: InferenceBackend) -> None:
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
        self.backend_key_ids[backend_id] = claimed_id

    async def _probe_backends(self, every: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every)
            await self._probe_once()

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
        for task in self._role_tasks:
            task.cancel()
        for task in self._role_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for role in reversed(self._roles):  # the writer before the log's store closes
            await role.close()
        await asyncio.to_thread(self.usage_queries.close)
        await self.webhooks.drain(5.0)
        await self.webhooks.close()
        await self.session.close()
        await close_all([c for c in self.clients.values() if isinstance(c, KServeGrpcClient)])
        await self.stores.close()
        if self.local_worker is not None:
            await self.local_worker.stop()

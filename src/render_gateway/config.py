"""Typed settings: a TOML file, then ``RENDER_*`` environment variables, then CLI flags.

Unknown keys are refused (with their name), so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from render_gateway.url_policy import UrlPolicy, UrlRefused, check_literal

DEFAULT_DATA_DIR = Path(".render")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    """One model served by the worker: a local directory written by ``save_pretrained``."""

    path: Path
    max_concurrency: int = Field(default=1, ge=1, le=64)
    default_steps: int | None = Field(default=None, ge=1, le=500)
    min_side: int | None = Field(default=None, ge=8)
    max_side: int | None = Field(default=None, ge=8, le=8192)
    fps: int = Field(default=8, ge=1, le=60)


class RemoteImagesConfig(_Section):
    """How the worker treats image/mask references that are URLs."""

    enabled: bool = True
    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    timeout_seconds: float = Field(default=10.0, gt=0)
    allow_http: bool = False
    allow_private_addresses: bool = False


class WorkerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535)
    # KServe v2 over gRPC on the same host (None: off; 0: any free port).
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    data_dir: Path = DEFAULT_DATA_DIR / "worker"
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # One intra-op thread per run makes a run's CPU time exactly the calling thread's time.
    cpu_threads: int = Field(default=1, ge=1, le=256)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Usage claims that finish within this many ms of each other are signed as one window
    # (Ed25519-window: one signature, checked once per window); claim_window_max = 1 signs
    # each claim directly (Ed25519).
    claim_window_ms: float = Field(default=2.0, ge=0, le=1000)
    claim_window_max: int = Field(default=1024, ge=1, le=65536)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    remote_images: RemoteImagesConfig = Field(default_factory=RemoteImagesConfig)


class PlanConfig(_Section):
    """What a customer's plan allows."""

    rate_capacity: float = Field(default=20, gt=0)  # token bucket size (requests)
    rate_refill_per_second: float = Field(default=2, ge=0)
    allow_high_priority: bool = False
    max_queued_jobs: int = Field(default=100, ge=1)
    admin: bool = False  # may read any customer's usage
    # Pricing tier: currency per GPU-second, with per-family overrides.
    price_per_gpu_second: float = Field(default=0.0, ge=0)
    family_prices: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    # Default monthly budget of every customer on the plan (None: unlimited).
    monthly_gpu_seconds: PositiveFloat | None = None
    monthly_cost: NonNegativeFloat | None = None


class AuditConfig(_Section):
    """The cold path: signed attestation batches in content-addressed storage."""

    # file:///abs/dir (default: <data_dir>/cas) or s3://bucket/prefix (credentials from AWS_* env)
    cas_url: str | None = None
    origin: str = Field(default="render-gateway/audit", pattern=r"^[^\s+]+$", max_length=200)
    batch_records: int = Field(default=10_000, ge=1, le=1_000_000)
    batch_seconds: float = Field(default=5.0, gt=0, le=3600)
    # The log's Ed25519 key (PEM, mode 0600), read and never created: what replicas share.
    # Unset: <data_dir>/audit/log.key, created on first start.
    key_file: Path | None = None


class ReconcileConfig(_Section):
    """Hot path against cold path, periodically inside serve."""

    enabled: bool = True
    interval_seconds: float = Field(default=300.0, ge=10)  # τ: one window per interval
    lateness_seconds: float = Field(default=600.0, ge=0)  # a window is closed this long after
    threshold: float = Field(default=0.001, ge=0, le=1)  # relative delta per (customer, model)
    alert_webhook: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    repair: bool = False  # re-insert into ClickHouse what only the cold path has


class WebhooksConfig(_Section):
    """Where webhooks (job webhooks and the reconciliation alert) may be delivered."""

    allow_http: bool = False  # plain http as well as https
    allow_private_addresses: bool = False  # hosts on loopback/private/link-local addresses
    # When not empty, the only hosts deliveries may go to (".example.com": its subdomains),
    # checked on the URL before any DNS lookup.
    allowed_hosts: list[str] = Field(default_factory=list)
    # The signing secret (``whsec_…``, mode 0600), read and never created: what replicas
    # share. Unset: <data_dir>/webhook_secret, created on first start.
    secret_file: Path | None = None

    def policy(self) -> UrlPolicy:
        return UrlPolicy(self.allow_http, self.allow_private_addresses, tuple(self.allowed_hosts))


class CustomerBudgetConfig(_Section):
    """A customer's own monthly budget; replaces the plan's for that customer."""

    monthly_gpu_seconds: PositiveFloat | None = None
    monthly_cost: NonNegativeFloat | None = None


class MeteringConfig(_Section):
    """The hot path: usage records into ClickHouse."""

    # chdb:///path (embedded, the default under the data dir) or http(s)://user@host:8123/db
    url: str | None = None
    password_file: Path | None = None  # a file (mode 0600) with the ClickHouse password
    flush_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    # λ·W_flush with 2× headroom at the design's 10,000 records/s and a 1 s flush.
    batch_rows: int = Field(default=20_000, ge=1, le=1_000_000)
    retention_days: int = Field(default=400, ge=1)


class BackendConfig(_Section):
    id: str = Field(min_length=1, max_length=64)
    # KServe v2 over HTTP(S), or over gRPC: grpc://host:port (plaintext; Triton's gRPC port)
    endpoint: str = Field(pattern=r"^(https?://|grpc://[^/]+$)")
    family: str = Field(min_length=1)
    models: dict[str, str] = Field(min_length=1)  # gateway model name → backend model name
    capacity: int = Field(default=1, ge=1, le=1024)
    type: str = "torch"
    streaming: bool = True
    # The output holding the media (docs/WORKER.md, the backend convention); None: `images`,
    # or `video` for a model without `images`.
    output: str | None = Field(default=None, min_length=1, max_length=256)
    # A gRPC backend's HTTP base URL where its node key is served (`GET /v2/node`, Render's
    # worker): KServe v2 gRPC has no place for it, and without it the claims go unchecked.
    node_url: str | None = Field(default=None, pattern=r"^https?://")


class CatalogEntryConfig(_Section):
    modality: Literal["image", "video"]
    family: str = Field(min_length=1)
    model: str = Field(min_length=1)
    tasks: list[Literal["t2i", "i2i", "edit", "t2v", "i2v"]] = Field(min_length=1)
    status: Literal["active", "preview", "coming_soon", "deprecated"] = "active"
    aliases: list[str] = Field(default_factory=list)
    backend_type: str | None = None
    default_format: str | None = None


class JwtConfig(_Section):
    issuer: str | None = None
    audience: str | None = None
    algorithms: list[Literal["HS256", "RS256", "ES256", "EdDSA"]] = Field(min_length=1)
    hs256_secret_file: Path | None = None  # a file (mode 0600) holding the shared secret
    public_key_files: list[Path] = Field(default_factory=list)  # PEM public keys
    jwks_url: str | None = None
    plan_claim: str = "plan"
    default_plan: str = "default"
    leeway_seconds: float = Field(default=30, ge=0)


class RetryConfig(_Section):
    max_attempts: int = Field(default=3, ge=1, le=10)
    base_delay_seconds: float = Field(default=0.2, gt=0)
    max_delay_seconds: float = Field(default=5.0, gt=0)
    run_timeout_seconds: float = Field(default=600.0, gt=0)


class BreakerSettings(_Section):
    failure_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    window_seconds: float = Field(default=30.0, gt=0)
    minimum_calls: int = Field(default=10, ge=1)
    open_seconds: float = Field(default=15.0, gt=0)
    half_open_successes: int = Field(default=3, ge=1)


class StoresConfig(_Section):
    """Where each stateful concern lives: one URL each (OPERATIONS.md, stores). Unset: the
    embedded store under the data dir, as a single process needs."""

    jobs: str | None = Field(default=None, max_length=2048)  # sqlite:///path (jobs + queue)
    limits: str | None = Field(default=None, max_length=2048)  # memory:// (rate-limit buckets)
    budgets: str | None = Field(default=None, max_length=2048)  # memory:// (budget ledger)
    events: str | None = Field(default=None, max_length=2048)  # memory:// (job events, cancels)
    keys: str | None = Field(default=None, max_length=2048)  # sqlite:///path (API keys)
    webhooks: str | None = Field(default=None, max_length=2048)  # sqlite:///path (deliveries)
    assets: str | None = Field(default=None, max_length=2048)  # file:///dir or s3://bucket/prefix
    # The usage stream commits with the jobs (a record exists iff its request ended), so it
    # lives in the jobs store: unset, or the same URL as ``jobs``.
    usage: str | None = Field(default=None, max_length=2048)
    leases: str | None = Field(default=None, max_length=2048)  # sqlite:///path or memory://
    # memory:// (this process's runs) or redis:// (a backend's capacity counted once across
    # the replicas sharing it)
    slots: str | None = Field(default=None, max_length=2048)


class SharedConfig(_Section):
    """Where the concerns many replicas share live: one Redis. Setting ``url`` moves the jobs
    and their queue (with the usage stream), limits, budgets, events and cancels, API keys,
    webhook deliveries, leases and backend slots there; a per-concern URL in
    ``[gateway.stores]`` still overrides it. The assets and the audit CAS are objects:
    ``s3://`` or a shared ``file://`` directory."""

    url: str | None = Field(default=None, pattern=r"^rediss?://", max_length=2048)
    # A file (mode 0600) with the Redis password (AUTH), used by every Redis client this process
    # opens; a password in a URL (redis://:pw@host) takes precedence over it.
    password_file: Path | None = None
    # Redis WAIT: a 202 (an admission) and a job's end are acknowledged only once this many
    # Redis replicas have the write, waiting up to wait_timeout_ms (then 503: the job is on the
    # primary and will run; a resubmit with the same Idempotency-Key is safe). 0: the primary's
    # own acknowledgement (with appendfsync always, on its disk) is enough.
    wait_replicas: int = Field(default=0, ge=0, le=16)
    wait_timeout_ms: int = Field(default=1000, ge=1, le=60_000)


Role = Literal["api", "scheduler", "metering", "audit", "reconciler"]
ROLES: tuple[Role, ...] = ("api", "scheduler", "metering", "audit", "reconciler")


def check_advertise_url(url: str) -> str:
    """``url`` without a trailing slash when it is a plain http(s) base URL (a host, maybe a
    port and a path; no user, query or fragment: other replicas send callers' keys to it)."""
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number or out of range
        port_ok = False
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or parts.query
        or parts.fragment
        or not port_ok
        or any(c.isspace() for c in url)
    ):
        raise ValueError(
            f"gateway.advertise_url = {url!r}: expected a plain http(s)://host[:port] URL"
        )
    return url.rstrip("/")


class GatewayConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # The base URL the other replicas reach this one at (they relay usage reads to the one
    # holding the metering lease). Unset: http://<host>:<port> as serve binds them.
    advertise_url: str | None = Field(default=None, max_length=2048)
    data_dir: Path = DEFAULT_DATA_DIR
    # When no backend is configured, serve starts a local reference worker on the demo model.
    local_demo_worker: bool = True
    anonymous_plan: str | None = None  # anonymous access only when set
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # A request body must arrive whole within this (408 after it): no slow or short body
    # holds a connection and a handler open.
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    max_queued_jobs: int = Field(default=100_000, ge=1)
    # How long the signed asset URLs handed out (job views, webhooks, Content-Location) work,
    # and the longest one POST /assets/{id}/url mints. 7 days, as S3's presigned URLs.
    asset_url_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60, le=31 * 24 * 3600)
    # The key of those URLs (base64, mode 0600), read and never created, so that a URL minted
    # by one replica verifies on every other. Unset: <data_dir>/asset_url_secret.
    asset_url_secret_file: Path | None = None
    # How long an upload URL of POST /uploads may be used (the contract's hour), and how long
    # its PUT may take to send the bytes (up to 50 MiB: longer than body_timeout_seconds).
    upload_url_ttl_seconds: int = Field(default=3600, ge=1, le=24 * 3600)
    upload_timeout_seconds: float = Field(default=600.0, gt=0, le=3600)
    recovery: Literal["requeue", "fail"] = "requeue"
    max_job_retries: int = Field(default=2, ge=0)
    # On SIGTERM running jobs get this long to finish (and be billed) before they are stopped
    # on their backend and requeued without spending a retry.
    drain_seconds: float = Field(default=20.0, ge=0, le=3600)
    sqlite_synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    plans: dict[str, PlanConfig] = Field(
        default_factory=lambda: {
            "default": PlanConfig(),
            "admin": PlanConfig(
                rate_capacity=1000,
                rate_refill_per_second=100,
                allow_high_priority=True,
                max_queued_jobs=10_000,
                admin=True,
            ),
        }
    )
    backends: list[BackendConfig] = Field(default_factory=list)
    models: list[CatalogEntryConfig] = Field(default_factory=list)
    jwt: JwtConfig | None = None
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    budgets: dict[str, CustomerBudgetConfig] = Field(default_factory=dict)  # by customer id
    # What a request reserves against a budget before any run of its model has been seen.
    reservation_gpu_seconds: float = Field(default=1.0, gt=0)
    metering: MeteringConfig = Field(default_factory=MeteringConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    reconcile: ReconcileConfig = Field(default_factory=ReconcileConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    stores: StoresConfig = Field(default_factory=StoresConfig)
    shared: SharedConfig = Field(default_factory=SharedConfig)
    # What this process runs (serve --roles): the HTTP API, the scheduler loop, and the three
    # singletons, each of which runs only while this process holds its lease.
    roles: list[Role] = Field(default_factory=lambda: list(ROLES), min_length=1)

    @field_validator("advertise_url")
    @classmethod
    def _advertise_url_is_plain(cls, url: str | None) -> str | None:
        return None if url is None else check_advertise_url(url)

    @model_validator(mode="after")
    def _alert_webhook_is_allowed(self) -> GatewayConfig:
        # Its form only (scheme, an IP literal): a name is checked when a delivery connects.
        url = self.reconcile.alert_webhook
        policy = self.webhooks.policy()
        try:
            if url is not None:
                check_literal(url, policy)
        except UrlRefused as exc:
            raise ValueError(
                f"gateway.reconcile.alert_webhook: {exc} (see gateway.webhooks.allow_http and "
                "allow_private_addresses)"
            ) from None
        return self

    @model_validator(mode="after")
    def _plans_exist(self) -> GatewayConfig:
        known = ", ".join(sorted(self.plans))
        if "default" not in self.plans:
            raise ValueError(f"gateway.plans: a plan named 'default' is required (have: {known})")
        named = {"gateway.anonymous_plan": self.anonymous_plan}
        if self.jwt is not None:
            named["gateway.jwt.default_plan"] = self.jwt.default_plan
        for setting, plan in named.items():
            if plan is not None and plan not in self.plans:
                raise ValueError(f"{setting}: unknown plan {plan!r} (known: {known})")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RENDER_", env_nested_delimiter="__", extra="forbid"
    )

    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)


class ConfigError(RuntimeError):
    """The configuration cannot be used; the message names the setting."""


def load_settings(config_file: Path | None = None) -> Settings:
    """Settings from ``config_file`` (TOML, optional) overlaid with the environment."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    from pydantic import ValidationError

    try:
        return Settings.model_validate(_FileSettings().model_dump())
    except ValidationError as exc:
        problems = "; ".join(_problem(e["loc"], e["msg"]) for e in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from exc
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"cannot read {config_file}: {exc}") from exc


def _problem(location: tuple[int | str, ...], message: str) -> str:
    # Whole-section checks name their setting in the message itself.
    if message.startswith("Value error, gateway."):
        return message.removeprefix("Value error, ")
    return f"{'.'.join(str(p) for p in location)}: {message}"

"""The configured inference backends: which can take a job now, and the slot each job holds.

Selection (per API.md / issue 3): serves the family and model (and the asked-for backend type),
healthy by its last probe, below capacity, admitted by its circuit breaker; among those, the one
with the fewest jobs in flight. A taken slot is a ``Lease``: it is released exactly once on
every path — reported success or failure, or released without a result (cancelled, timed out,
an exception) when the holder leaves its ``with`` block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from render_gateway.core.routes import route_key_of
from render_gateway.scheduling.breaker import BreakerConfig, BreakerState, CircuitBreaker


@dataclass(frozen=True)
class BackendSpec:
    id: str
    endpoint: str
    family: str
    # Gateway model name (e.g. "schnell") → the model's name on the backend (KServe model).
    models: Mapping[str, str]
    capacity: int = 1
    type: str = "torch"
    # generate_stream gives real progress and a signed claim on cancel; a plain Triton model
    # may only offer infer.
    streaming: bool = True
    output: str | None = None  # the media output's name (None: the convention's default)
    node_url: str | None = None  # where a gRPC backend's node key is served over HTTP

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"backend {self.id}: capacity must be at least 1")
        if not self.models:
            raise ValueError(f"backend {self.id}: serves no models")


@dataclass
class Backend:
    spec: BackendSpec
    breaker: CircuitBreaker
    healthy: bool = True
    in_flight: int = 0
    served: int = 0
    failed: int = 0

    def serves(self, family: str, model: str, backend_type: str | None) -> bool:
        return (
            self.spec.family == family
            and model in self.spec.models
            and (backend_type is None or self.spec.type == backend_type)
        )


@dataclass
class Lease:
    """One slot on one backend. Report ``succeeded()`` or ``failed()`` (the backend's fault)
    before leaving the ``with`` block; leaving without a report releases the slot with no
    verdict for the breaker."""

    backend: Backend
    model: str  # the backend's own model name
    _on_release: Callable[[Lease], None] = field(repr=False)
    _released: bool = False

    @property
    def released(self) -> bool:
        return self._released

    def succeeded(self) -> None:
        if self._release():
            self.backend.served += 1
            self.backend.breaker.record_success()

    def failed(self) -> None:
        if self._release():
            self.backend.failed += 1
            self.backend.breaker.record_failure()

    def release(self) -> None:
        if self._release():
            self.backend.breaker.release_without_result()

    def _release(self) -> bool:
        if self._released:
            return False
        self._released = True
        self._on_release(self)
        return True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class NoBackend(Exception):
    """No configured backend serves this family/model (and type): a 404 or 400, not a wait."""


class BackendPool:
    def __init__(
        self,
        specs: Iterable[BackendSpec],
        breaker_config: BreakerConfig | None = None,
        breaker_factory: Callable[[BreakerConfig], CircuitBreaker] = CircuitBreaker,
    ) -> None:
        config = breaker_config or BreakerConfig()
        self.backends: dict[str, Backend] = {}
        for spec in specs:
            if spec.id in self.backends:
                raise ValueError(f"backend id {spec.id!r} appears twice")
            self.backends[spec.id] = Backend(spec, breaker_factory(config))

    def serving(self, family: str, model: str, backend_type: str | None = None) -> list[Backend]:
        return [b for b in self.backends.values() if b.serves(family, model, backend_type)]

    def acquire(
        self,
        family: str,
        model: str,
        backend_type: str | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> Lease | None:
        """A slot on the least-loaded eligible backend, or None if none can take a job now.
        Raises NoBackend if nothing is configured for the family/model at all."""
        serving = self.serving(family, model, backend_type)
        if not serving:
            kind = f" of type {backend_type!r}" if backend_type else ""
            raise NoBackend(f"no backend{kind} serves {family}/{model}")
        candidates = sorted(
            (
                b
                for b in serving
                if b.healthy and b.in_flight < b.spec.capacity and b.spec.id not in exclude
            ),
            key=lambda b: (b.in_flight / b.spec.capacity, b.in_flight, b.spec.id),
        )
        for backend in candidates:
            # The breaker is asked last: a half-open breaker admits a single probe, which must
            # not be spent on a backend we then do not use.
            if backend.breaker.try_acquire():
                backend.in_flight += 1
                return Lease(backend, backend.spec.models[model], self._released)
        return None

    def _released(self, lease: Lease) -> None:
        lease.backend.in_flight -= 1

    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.backends.values())

    def free_slots(self, family: str, model: str, backend_type: str | None = None) -> int:
        """Slots a job could take now: healthy backends whose breaker is not open."""
        return sum(
            max(0, b.spec.capacity - b.in_flight)
            for b in self.serving(family, model, backend_type)
            if b.healthy and b.breaker.state is not BreakerState.open
        )

    def route_keys(self) -> tuple[frozenset[str], frozenset[str]]:
        """(runnable, served) route keys (``core.jobs.route_key``): the routes with a slot free
        now, and every route some backend serves, for the job store's atomic claim."""
        runnable: set[str] = set()
        served: set[str] = set()
        for backend in self.backends.values():
            spec = backend.spec
            for model in spec.models:
                for backend_type in (None, spec.type):
                    key = route_key_of(spec.family, model, backend_type)
                    served.add(key)
                    if key not in runnable and self.free_slots(spec.family, model, backend_type):
                        runnable.add(key)
        return frozenset(runnable), frozenset(served)

"""GET /capacity and ``render-gateway capacity``: the hot path's traffic per model joined with
the backend slots that serve it, planned by core/capacity.py.

The servers of a model are the summed ``capacity`` of every configured backend that serves its
family and model (healthy or not: capacity planning is about the slots there are, and the
breakdown says which are up). Replicas sharing the backends share their slots
(stores/backend_slots.py), so the configured capacity is the whole pool's, not per replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from render_gateway.application.local_worker import DEMO_MODEL
from render_gateway.application.services import backend_spec
from render_gateway.config import GatewayConfig
from render_gateway.core.capacity import Observation, plan_capacity
from render_gateway.metering.capacity_queries import ModelTraffic
from render_gateway.metering.queries import TimeRange
from render_gateway.scheduling.backend_pool import Backend, BackendPool, BackendSpec

# The figures' service time, said once in the answer.
SERVICE_TIME_SOURCE = (
    "inference_time_us: from taking a backend slot to the request's end, every status"
)
DEFAULT_WINDOW_SECONDS = 3600
MIN_WINDOW_SECONDS = 60
MAX_WINDOW_SECONDS = 30 * 86_400
# A p95 queue wait of a second: an interactive image request may wait that long for a slot.
DEFAULT_TARGET_WAIT_SECONDS = 1.0


def backends_serving(pool: BackendPool, model_name: str) -> list[Backend]:
    """The backends serving ``modality/family/model`` (a usage record's ``model_name``)."""
    parts = model_name.split("/")
    if len(parts) != 3:
        return []
    _modality, family, model = parts
    return pool.serving(family, model)


def capacity_report(
    traffic: list[ModelTraffic],
    pool: BackendPool,
    time_range: TimeRange,
    target_p95_wait_s: float,
    queue_depth: Mapping[str, int] | None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """The answer of GET /capacity: a plan per model seen in the window (and ``model_name``,
    when asked for and not seen: its plan says there is nothing to plan from)."""
    window_s = (time_range.end - time_range.start).total_seconds()
    found = {t.model_name: t for t in traffic}
    if model_name is not None and model_name not in found:
        found[model_name] = ModelTraffic(model_name, 0, 0.0, 0.0, 0.0, 0.0, ())
    models = []
    for name in sorted(found):
        seen = found[name]
        backends = backends_serving(pool, name)
        observation = Observation(
            name, window_s, seen.requests, seen.service_mean_s, seen.service_variance_s2,
            seen.mean_wait_s, seen.queue_length, sum(b.spec.capacity for b in backends),
            seen.minute_counts,
        )  # fmt: skip
        plan = plan_capacity(observation, target_p95_wait_s).to_dict()
        plan["backends"] = [
            {"id": b.spec.id, "capacity": b.spec.capacity, "healthy": b.healthy} for b in backends
        ]
        models.append(plan)
    return {
        "from": time_range.start.isoformat(),
        "to": time_range.end.isoformat(),
        "window_seconds": window_s,
        "target_p95_wait_s": target_p95_wait_s,
        "service_time": SERVICE_TIME_SOURCE,
        "queue_depth": dict(queue_depth) if queue_depth is not None else None,
        "models": models,
    }


def configured_pool(config: GatewayConfig) -> BackendPool:
    """The backends as ``serve`` would configure them, for a read without a running gateway:
    the configured ones, or the demo worker's slot when ``serve`` would start one."""
    specs = [backend_spec(b) for b in config.backends]
    if not specs and config.local_demo_worker:
        specs = [BackendSpec("local-demo", "", "sd", {"tiny": DEMO_MODEL})]
    return BackendPool(specs)

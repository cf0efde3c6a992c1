"""Start-up: torch settings, the device, and every configured model (blocking; run in a thread)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from render_gateway.config import WorkerConfig
from render_gateway.worker.devices import DeviceIdentity, identify, pick_device
from render_gateway.worker.pipelines import load_model
from render_gateway.worker.runs import RunService

if TYPE_CHECKING:
    from render_gateway.worker.state import WorkerState

log = logging.getLogger(__name__)


def prepare_device(config: WorkerConfig, node_public_key: bytes) -> DeviceIdentity:
    import torch
    from diffusers.utils import logging as diffusers_logging

    # diffusers warns on every pipeline construction (one per run here); keep errors only.
    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(config.cpu_threads)
    device = identify(pick_device(config.device), node_public_key)
    log.info(
        "device %s (%s, %s), uuid %s from %s",
        device.torch_device,
        device.kind,
        device.name,
        device.uuid,
        device.uuid_source,
    )
    return device


def load_models_into(
    service: RunService, state: WorkerState, config: WorkerConfig, device: DeviceIdentity
) -> None:
    for name, model_config in config.models.items():
        model_state = state.models[name]
        try:
            model = load_model(name, model_config, device.torch_device, config.dtype)
        except Exception as exc:  # a broken model must not take the others down
            log.exception("model %s failed to load from %s", name, model_config.path)
            model_state.status, model_state.error = "failed", f"{type(exc).__name__}: {exc}"
            continue
        service.add_model(model)
        model_state.status = "ready"
        log.info("model %s ready: %s, tasks %s", name, model.base_class, ",".join(model.tasks))

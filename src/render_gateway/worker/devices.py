"""Which device runs the pipelines, who it is, and how its time is measured.

On CUDA the metered time is the GPU time of the pipeline call, taken from CUDA events recorded
on the device's stream inside an NVTX range named by the request id, and the device is named by
its NVML UUID. On CPU it is the compute time (CPU seconds) of the thread that ran the call,
labelled ``device_kind: "cpu"`` — it is never presented as GPU time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceIdentity:
    torch_device: str  # "cuda:0" or "cpu"
    kind: str  # "cuda" or "cpu"
    uuid: str
    name: str
    uuid_source: str  # "nvml", "torch" or "machine-id"


def _nothing_yet() -> float:
    return 0.0


@dataclass
class Measurement:
    """Filled in when the metered block ends; ``so_far`` reads the device time while it runs
    (what progress events report, so a gateway can charge a run step by step)."""

    seconds: float = 0.0
    wall_seconds: float = 0.0
    meter: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    so_far: Callable[[], float] = field(default=_nothing_yet, repr=False)


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for, but torch sees no CUDA device")
    return requested if requested != "cuda" else "cuda:0"


def identify(torch_device: str, fallback_seed: bytes) -> DeviceIdentity:
    if torch_device.startswith("cuda"):
        return _identify_cuda(torch_device)
    return _identify_cpu(fallback_seed)


def _identify_cuda(torch_device: str) -> DeviceIdentity:
    import torch

    props = torch.cuda.get_device_properties(torch.device(torch_device))
    torch_uuid = str(props.uuid)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                nvml_uuid = pynvml.nvmlDeviceGetUUID(handle)
                if isinstance(nvml_uuid, bytes):
                    nvml_uuid = nvml_uuid.decode()
                if nvml_uuid.removeprefix("GPU-").removeprefix("MIG-") == torch_uuid:
                    return DeviceIdentity(torch_device, "cuda", nvml_uuid, props.name, "nvml")
        finally:
            pynvml.nvmlShutdown()
        log.warning("NVML lists no device with torch's UUID %s; using torch's", torch_uuid)
    except Exception as exc:  # NVML missing or failing: say so, keep the device's own UUID
        log.warning("NVML unavailable (%s); device UUID comes from torch", exc)
    return DeviceIdentity(torch_device, "cuda", "GPU-" + torch_uuid, props.name, "torch")


def _identify_cpu(fallback_seed: bytes) -> DeviceIdentity:
    """A stable id for the host: from the machine id when there is one, else from the node key."""
    source, seed = "node-key", fallback_seed
    for candidate in (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id")):
        with contextlib.suppress(OSError):
            text = candidate.read_text().strip()
            if text:
                source, seed = "machine-id", text.encode()
                break
    digest = hashlib.sha256(b"render-cpu-device\n" + seed).hexdigest()[:32]
    return DeviceIdentity("cpu", "cpu", f"cpu-{digest}", _cpu_name(), source)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def metered(device: DeviceIdentity, request_id: str) -> Iterator[Measurement]:
    """Measure the block's device time; on CUDA inside an NVTX range named ``request_id``."""
    measurement = Measurement(started_at=datetime.now(UTC))
    try:
        with _device_metered(device, request_id, measurement):
            yield measurement
    finally:
        measurement.ended_at = datetime.now(UTC)


@contextlib.contextmanager
def _device_metered(
    device: DeviceIdentity, request_id: str, measurement: Measurement
) -> Iterator[None]:
    if device.kind == "cuda":
        with _cuda_metered(device, request_id, measurement):
            yield
        return
    # On CPU the worker runs torch with one intra-op thread per run (see config), so the
    # calling thread's CPU time is the run's compute time.
    start_cpu, start_wall = time.thread_time(), time.perf_counter()
    # Read from the run's own thread (the pipeline's step callback), like the final figure.
    measurement.so_far = lambda: time.thread_time() - start_cpu
    try:
        yield
    finally:
        measurement.seconds = time.thread_time() - start_cpu
        measurement.wall_seconds = time.perf_counter() - start_wall
        measurement.meter = "thread_cpu_time"


@contextlib.contextmanager
def _cuda_metered(
    device: DeviceIdentity, request_id: str, measurement: Measurement
) -> Iterator[None]:
    import nvtx
    import torch

    torch_device = torch.device(device.torch_device)
    start: Any = torch.cuda.Event(enable_timing=True)
    end: Any = torch.cuda.Event(enable_timing=True)
    with nvtx.annotate(message=request_id, domain="render"), torch.cuda.device(torch_device):
        start_wall = time.perf_counter()
        start.record()
        measurement.so_far = _cuda_so_far(start)
        try:
            yield
        finally:
            end.record()
            end.synchronize()
            measurement.wall_seconds = time.perf_counter() - start_wall
            measurement.seconds = start.elapsed_time(end) / 1000.0
            measurement.meter = "cuda_events"


def _cuda_so_far(start: Any) -> Callable[[], float]:
    """Device time up to the newest step whose work the GPU has finished, without waiting for
    the GPU: each call records an event and reads the latest one already passed (so the figure
    lags by at most the steps still queued on the device)."""
    import torch

    pending: list[Any] = []
    done = 0.0

    def read() -> float:
        nonlocal done
        event: Any = torch.cuda.Event(enable_timing=True)
        event.record()
        pending.append(event)
        while pending and pending[0].query():
            done = start.elapsed_time(pending.pop(0)) / 1000.0
        return done

    return read

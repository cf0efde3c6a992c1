"""What a run will cost, learnt from the model's own finished runs: GPU-seconds per
megapixel-frame as a fixed part plus a part per denoising step, fitted by decayed least squares.

A request is then priced from its own work (``metering.work``): a 200-step run by one customer
raises nobody else's reservation, it only teaches the model's cost per step. Charges are upper
estimates: the fit is scaled by the largest recent ratio of actual to predicted cost, so a noisy
model is charged high rather than low. Pure: no I/O (the state is a plain dict to persist).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from render_gateway.metering.work import Work

_DECAY = 0.9  # each new run weighs as much as the ~10 before it together
_RATIOS = 20  # how many recent actual/predicted ratios bound the upper estimate
_HEADROOM = 1.2  # a reservation holds this much more than the upper estimate


@dataclass
class CostModel:
    """Per (family, model, task): GPU-seconds per megapixel-frame ≈ fixed + per_step × steps."""

    weight: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    default_steps: int | None = None  # what the backend ran when a request named no steps
    ratios: deque[float] = field(default_factory=lambda: deque(maxlen=_RATIOS))

    def fit(self) -> tuple[float, float] | None:
        """(fixed, per_step) per megapixel-frame, both ≥ 0; None before any run."""
        if self.weight <= 0 or self.sx <= 0:
            return None
        mean_x, mean_y = self.sx / self.weight, self.sy / self.weight
        variance = self.sxx / self.weight - mean_x * mean_x
        if variance <= 1e-9 * max(1.0, mean_x * mean_x):  # one step count seen: all per step
            return 0.0, self.sy / self.sx
        per_step = (self.sxy / self.weight - mean_x * mean_y) / variance
        fixed = mean_y - per_step * mean_x
        if per_step < 0:
            return mean_y, 0.0
        if fixed < 0:
            return 0.0, self.sxy / self.sxx
        return fixed, per_step

    def predict(self, size: float, steps: int) -> float | None:
        fitted = self.fit()
        if fitted is None:
            return None
        fixed, per_step = fitted
        return size * (fixed + per_step * steps)

    @property
    def upper(self) -> float:
        """The factor that makes a prediction an upper estimate (never below 1)."""
        return max([1.0, *self.ratios])

    def observe(self, size: float, steps: int, gpu_seconds: float) -> None:
        predicted = self.predict(size, steps)
        if predicted is not None and predicted > 0:
            self.ratios.append(gpu_seconds / predicted)
        y = gpu_seconds / size
        self.weight, self.sx, self.sy = (
            self.weight * _DECAY + 1, self.sx * _DECAY + steps, self.sy * _DECAY + y,
        )  # fmt: skip
        self.sxx = self.sxx * _DECAY + steps * steps
        self.sxy = self.sxy * _DECAY + steps * y

    def to_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "sx": self.sx, "sy": self.sy, "sxx": self.sxx,
                "sxy": self.sxy, "default_steps": self.default_steps,
                "ratios": list(self.ratios)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostModel:
        steps = data.get("default_steps")
        return cls(
            float(data["weight"]), float(data["sx"]), float(data["sy"]), float(data["sxx"]),
            float(data["sxy"]), int(steps) if isinstance(steps, int) else None,
            deque((float(r) for r in data.get("ratios", ())), maxlen=_RATIOS),
        )  # fmt: skip


class CostEstimator:
    """Cost models of every (family, model, task) seen, and the estimates made from them."""

    def __init__(self, floor_gpu_seconds: float) -> None:
        self.floor = floor_gpu_seconds  # what a request of a never-seen model reserves
        self._models: dict[tuple[str, str, str], CostModel] = {}

    def steps_of(self, work: Work) -> int | None:
        model = self._models.get(work.model_key)
        return work.steps or (model.default_steps if model else None)

    def cost_after(self, work: Work, steps: int) -> float | None:
        """Upper estimate of the GPU-seconds a run has used once ``steps`` steps are done."""
        model = self._models.get(work.model_key)
        predicted = model.predict(work.size, steps) if model else None
        return None if predicted is None or model is None else predicted * model.upper

    def reservation(self, work: Work) -> float:
        """What to hold before the run starts: the whole run's upper estimate with headroom, or
        the floor while the model (or its default step count) is unknown."""
        steps = self.steps_of(work)
        cost = self.cost_after(work, steps) if steps else None
        return self.floor if cost is None else cost * _HEADROOM

    def observe(
        self, work: Work, steps_done: int, gpu_seconds: float, finished: bool = True
    ) -> bool:
        """Learn from a run that ended (``finished``: it ran all its steps; otherwise it was
        stopped after ``steps_done``); True when it is the model's first (worth saving)."""
        if steps_done <= 0 or work.size <= 0 or gpu_seconds < 0:
            return False
        first = work.model_key not in self._models
        model = self._models.setdefault(work.model_key, CostModel())
        model.observe(work.size, steps_done, gpu_seconds)
        if work.steps is None and finished:
            model.default_steps = steps_done
        return first

    def to_list(self) -> list[dict[str, Any]]:
        return [{"key": list(key), **model.to_dict()} for key, model in self._models.items()]

    def load(self, entries: list[Mapping[str, Any]]) -> None:
        for entry in entries:
            family, model, task = (str(part) for part in entry["key"])
            self._models[family, model, task] = CostModel.from_dict(entry)

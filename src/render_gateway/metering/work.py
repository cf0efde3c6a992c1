"""How much work a generation request asks for, measured the same way for every customer.

A run's GPU time grows with its denoising steps and, per step, with the pixels it denoises:
width × height × frames × images. ``Work`` is that request's own size; the model's observed cost
per unit of it (``metering.estimates``) turns it into a reservation. Nothing here depends on what
other customers asked for. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from render_gateway.formats import DEFAULT_FORMAT, Modality, format_size

# Frames per second of video duration, only as a unit of size (the fit absorbs the real rate).
_FRAMES_PER_SECOND = 16.0
_DEFAULT_VIDEO_SECONDS = 1.0


@dataclass(frozen=True)
class Work:
    """One request's work: the model and task it runs on, its steps (None: the backend's
    default, learnt from runs) and its size in megapixel-frames per step."""

    family: str
    model: str
    task: str
    steps: int | None
    size: float

    @property
    def model_key(self) -> tuple[str, str, str]:
        return (self.family, self.model, self.task)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "model": self.model, "task": self.task,
                "steps": self.steps, "size": self.size}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Work:
        steps = data.get("steps")
        return cls(
            str(data["family"]), str(data["model"]), str(data["task"]),
            int(steps) if isinstance(steps, int) else None, float(data["size"]),
        )  # fmt: skip


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _pixels(modality: Modality, format_name: Any, generation: Mapping[str, Any]) -> int:
    width, height = _positive_int(generation.get("width")), _positive_int(generation.get("height"))
    if width and height:
        return width * height
    try:
        w, h = format_size(modality, str(format_name or DEFAULT_FORMAT[modality]))
    except KeyError:  # a format this table does not know: size it as the default
        w, h = format_size(modality, DEFAULT_FORMAT[modality])
    return w * h


def work_of(
    modality: str, family: str, model: str, task: str, format_name: Any,
    generation: Mapping[str, Any],
) -> Work:  # fmt: skip
    """The work a request asks for, from the request alone (API.md's generation fields)."""
    kind: Modality = "video" if modality == "video" else "image"
    pixels = _pixels(kind, format_name, generation)
    if kind == "video":
        duration = generation.get("duration")
        seconds = float(duration) if isinstance(duration, int | float) else _DEFAULT_VIDEO_SECONDS
        frames = max(1.0, seconds * _FRAMES_PER_SECOND)
        count = 1
    else:
        frames, count = 1.0, _positive_int(generation.get("count")) or 1
    size = pixels / 1e6 * frames * count
    return Work(family, model, task, _positive_int(generation.get("steps")), size)

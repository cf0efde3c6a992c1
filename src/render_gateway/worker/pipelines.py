"""Loaded diffusers pipelines: which tasks each can do, and how a request becomes a call.

``plan`` turns a validated GenerationRequest into the keyword arguments of one pipeline call,
refusing (with a message for a 400) anything the pipeline cannot honour. ``execute`` runs the
call on a per-run pipeline object (shared weights, its own scheduler), reporting every finished
denoising step and stopping at the next step once cancelled.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from render_gateway.config import ModelConfig
from render_gateway.formats import format_size
from render_gateway.generation import GenerationRequest
from render_gateway.worker.devices import Measurement

log = logging.getLogger(__name__)

# Settings a model directory may carry in ``render.json`` (config wins over it).
MODEL_HINTS_FILE = "render.json"

# Pipeline arguments the worker controls; a request's extra keys never reach them.
RESERVED_ARGUMENTS = frozenset(
    {
        "prompt", "negative_prompt", "image", "mask_image", "num_inference_steps",
        "guidance_scale", "true_cfg_scale", "strength", "num_images_per_prompt", "height",
        "width", "num_frames", "generator", "latents", "output_type", "return_dict",
        "callback", "callback_steps", "callback_on_step_end",
        "callback_on_step_end_tensor_inputs", "prompt_embeds", "negative_prompt_embeds",
        "pooled_prompt_embeds", "negative_pooled_prompt_embeds", "ip_adapter_image",
        "ip_adapter_image_embeds", "cross_attention_kwargs", "joint_attention_kwargs",
        "attention_kwargs",
    }
)  # fmt: skip


class PlanError(ValueError):
    """The request cannot run on this model; the message says why (a 400)."""


class RunCancelled(Exception):
    """Raised from the step callback to stop a run at the next step boundary."""

    def __init__(self, steps_completed: int) -> None:
        super().__init__(f"cancelled after {steps_completed} steps")
        self.steps_completed = steps_completed
        self.measurement = Measurement()  # the device time spent before the stop


@dataclass(frozen=True)
class RunPlan:
    task: str
    arguments: dict[str, Any]
    steps: int
    width: int
    height: int
    seed: int
    ignored_keys: tuple[str, ...]
    frames_per_second: int | None = None
    # The caller's own fields passed through to the pipeline as they came (its signature
    # accepts them): a pipeline that then fails before its first step failed on them.
    passed_keys: tuple[str, ...] = ()
    # After which steps to decode the latents into a preview image (the request's previews,
    # spread evenly over the run; none where the pipeline hands no latents to its callback).
    preview_steps: tuple[int, ...] = ()


def preview_steps(previews: int | None, steps: int) -> tuple[int, ...]:
    """``previews`` steps spread evenly over a ``steps``-step run, before its last one."""
    if not previews or steps < 2:
        return ()
    return tuple(sorted({max(1, round(steps * i / (previews + 1))) for i in range(1, previews + 1)}
                        - {steps}))  # fmt: skip


@dataclass
class Generated:
    output: Any  # the pipeline's output object (PIL images, or frames as arrays)
    steps_completed: int
    measurement: Measurement


@dataclass
class Encoded:
    outputs: list[bytes]
    content_type: str
    seconds: float


Meter = Callable[[], AbstractContextManager[Measurement]]


@dataclass
class LoadedModel:
    name: str
    config: ModelConfig
    modality: str  # "image" or "video"
    base_class: str
    pipelines: dict[str, Any]  # task → pipeline sharing the base's components
    default_width: int
    default_height: int
    default_steps: int
    min_side: int
    max_side: int
    size_multiple: int
    _signatures: dict[str, frozenset[str]] = field(default_factory=dict)
    _thread_pipelines: threading.local = field(default_factory=threading.local)

    @property
    def tasks(self) -> list[str]:
        return sorted(self.pipelines)

    def accepts(self, task: str) -> frozenset[str]:
        if task not in self._signatures:
            call = self.pipelines[task].__call__
            self._signatures[task] = frozenset(inspect.signature(call).parameters)
        return self._signatures[task]

    # --------------------------------------------------------------------------- planning

    def plan(self, request: GenerationRequest, seed: int) -> RunPlan:
        if request.task not in self.pipelines:
            raise PlanError(
                f"model {self.name!r} ({self.base_class}) cannot do task {request.task!r}; "
                f"it does: {', '.join(self.tasks)}"
            )
        accepts = self.accepts(request.task)
        width, height = self._size(request)
        steps = request.steps or self.default_steps
        arguments: dict[str, Any] = {"prompt": request.prompt, "num_inference_steps": steps}
        if "height" in accepts and "width" in accepts:
            arguments["height"], arguments["width"] = height, width
        elif request.format is not None or request.width is not None:
            raise PlanError(f"model {self.name!r} does not take a size; omit format/width/height")

        def put(name: str, value: Any, what: str) -> None:
            if name not in accepts:
                raise PlanError(f"model {self.name!r} does not accept {what!r}")
            arguments[name] = value

        if request.negative_prompt is not None:
            put("negative_prompt", request.negative_prompt, "negative_prompt")
        self._guidance(request, accepts, arguments)
        if request.strength is not None:
            if request.task not in ("i2i", "edit"):
                raise PlanError("'strength' applies to tasks i2i and edit only")
            put("strength", request.strength, "strength")
        if request.count is not None:
            put("num_images_per_prompt", request.count, "count")
        frames_per_second = None
        if self.modality == "video":
            frames_per_second = self.config.fps
            if request.duration is not None:
                frames = max(1, round(request.duration * frames_per_second))
                put("num_frames", frames, "duration")
        ignored, passed = [], []
        for key, value in sorted(request.extra_fields.items()):
            scalar = isinstance(value, bool | int | float | str)
            if key in accepts and key not in RESERVED_ARGUMENTS and scalar:
                arguments[key] = value
                passed.append(key)
            else:
                ignored.append(key)
        return RunPlan(
            task=request.task,
            arguments=arguments,
            steps=steps,
            width=width,
            height=height,
            seed=seed,
            ignored_keys=tuple(ignored),
            frames_per_second=frames_per_second,
            passed_keys=tuple(passed),
            preview_steps=(
                preview_steps(request.previews, steps)
                if self.modality == "image" and "callback_on_step_end" in accepts
                else ()
            ),
        )

    def _size(self, request: GenerationRequest) -> tuple[int, int]:
        if request.format is not None:
            try:
                width, height = format_size(request.modality, request.format)
            except KeyError as exc:
                raise PlanError(str(exc.args[0])) from None
        elif request.width is not None and request.height is not None:
            width, height = request.width, request.height
        else:
            return self.default_width, self.default_height
        for side, value in (("width", width), ("height", height)):
            if not self.min_side <= value <= self.max_side:
                raise PlanError(
                    f"{side} {value} is out of range for model {self.name!r} "
                    f"({self.min_side}–{self.max_side})"
                )
            if value % self.size_multiple:
                raise PlanError(f"{side} {value} must be a multiple of {self.size_multiple}")
        return width, height

    @staticmethod
    def _guidance(
        request: GenerationRequest, accepts: frozenset[str], arguments: dict[str, Any]
    ) -> None:
        if "true_cfg_scale" in accepts:
            # Flux-style: distilled guidance and true classifier-free guidance are separate.
            if request.guidance is not None:
                arguments["guidance_scale"] = request.guidance
            if request.cfg is not None:
                arguments["true_cfg_scale"] = request.cfg
            return
        if (
            request.guidance is not None
            and request.cfg is not None
            and request.guidance != request.cfg
        ):
            raise PlanError("this model has one guidance scale: give 'guidance' or 'cfg', not both")
        scale = request.cfg if request.cfg is not None else request.guidance
        if scale is not None:
            if "guidance_scale" not in accepts:
                raise PlanError("this model does not accept a guidance scale")
            arguments["guidance_scale"] = scale

    # -------------------------------------------------------------------------- execution

    def _pipeline_for_this_thread(self, task: str) -> Any:
        """This thread's own pipeline object: shared weights, its own scheduler and call
        state (diffusers keeps both on the pipeline object, so concurrent runs must not share
        one). Each run thread builds it once and reuses it."""
        cache: dict[str, Any] = self._thread_pipelines.__dict__.setdefault("by_task", {})
        if task not in cache:
            template = self.pipelines[task]
            scheduler = type(template.scheduler).from_config(template.scheduler.config)
            pipe = type(template)(**{**template.components, "scheduler": scheduler})
            pipe.set_progress_bar_config(disable=True)
            cache[task] = pipe
        return cache[task]

    def generate(
        self,
        plan: RunPlan,
        images: dict[str, Image.Image],
        cancel: threading.Event,
        on_step: Callable[[int, int, float, bytes | None], None],
        meter: Meter,
    ) -> Generated:
        """Run the pipeline; only the call itself is metered (not set-up, not encoding)."""
        import torch

        pipe = self._pipeline_for_this_thread(plan.task)
        completed = 0
        measurement = Measurement()

        def finished_step(step_index: int, total: int, preview: bytes | None = None) -> None:
            nonlocal completed
            completed = step_index + 1
            on_step(completed, total, measurement.so_far(), preview)
            if cancel.is_set():
                raise RunCancelled(completed)

        def step_end(
            pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            latents = kwargs.get("latents")
            preview = None
            if step + 1 in plan.preview_steps and latents is not None:
                preview = decode_preview(pipeline, latents)
            finished_step(step, int(pipeline.num_timesteps), preview)
            return kwargs

        def legacy_step(step: int, timestep: Any, latents: Any) -> None:
            order = int(getattr(pipe.scheduler, "order", 1))
            finished_step(step, len(pipe.scheduler.timesteps) // order)

        arguments = dict(plan.arguments)
        if "image" in images:
            arguments["image"] = images["image"].convert("RGB").resize((plan.width, plan.height))
        if "mask" in images:
            arguments["mask_image"] = images["mask"].convert("L").resize((plan.width, plan.height))
        # A CPU generator gives the same noise for a seed on every device.
        arguments["generator"] = torch.Generator("cpu").manual_seed(plan.seed)
        if "callback_on_step_end" in self.accepts(plan.task):
            arguments["callback_on_step_end"] = step_end
        else:  # older pipelines (e.g. TextToVideoSD) only have the per-step ``callback``
            arguments["callback"], arguments["callback_steps"] = legacy_step, 1
        if cancel.is_set():
            raise RunCancelled(0)
        output_type = "np" if self.modality == "video" else "pil"
        try:
            with meter() as measurement:
                output = pipe(**arguments, output_type=output_type)
        except RunCancelled as stop:
            stop.measurement = measurement
            raise
        return Generated(output, completed, measurement)

    def encode(self, generated: Generated, plan: RunPlan) -> Encoded:
        """PNG per image, or one MP4: CPU work, done after the device slot is released."""
        from render_gateway.worker.media import encode_mp4, encode_png

        started = time.perf_counter()
        if self.modality == "video":
            import numpy as np

            # The first (only) video of the batch, shaped (frames, height, width, channels).
            frames = np.asarray(generated.output.frames[0])
            video = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
            fps = plan.frames_per_second or self.config.fps
            outputs, content_type = [encode_mp4(video, fps)], "video/mp4"
        else:
            outputs = [encode_png(image) for image in generated.output.images]
            content_type = "image/png"
        return Encoded(outputs, content_type, time.perf_counter() - started)


def decode_preview(pipeline: Any, latents: Any) -> bytes | None:
    """The image the latents of an unfinished run show (the pipeline's own VAE decode and
    post-processing, as at its end), as PNG; None for a pipeline that has neither."""
    import torch

    from render_gateway.worker.media import encode_png

    vae, processor = getattr(pipeline, "vae", None), getattr(pipeline, "image_processor", None)
    if vae is None or processor is None:
        return None
    with torch.no_grad():
        decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    images = processor.postprocess(decoded, output_type="pil")
    return encode_png(images[0])


# ------------------------------------------------------------------------------- loading


def _torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def load_model(name: str, config: ModelConfig, device: str, dtype: str) -> LoadedModel:
    """``from_pretrained`` from a local directory only (HF_HUB_OFFLINE is set by the CLI)."""
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        AutoPipelineForText2Image,
        DiffusionPipeline,
    )

    path = Path(config.path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} holds no diffusers pipeline (no model_index.json)")
    hints = _read_hints(path)
    base = DiffusionPipeline.from_pretrained(
        str(path), local_files_only=True, torch_dtype=_torch_dtype(dtype, device)
    )
    base = base.to(device)
    class_name = type(base).__name__
    parameters = frozenset(inspect.signature(base.__call__).parameters)
    pipelines: dict[str, Any] = {}
    if "Video" in class_name or "AnimateDiff" in class_name or "I2VGen" in class_name:
        modality = "video"
        pipelines["i2v" if "image" in parameters else "t2v"] = base
    else:
        modality = "image"
        derivations = {
            "t2i": AutoPipelineForText2Image,
            "i2i": AutoPipelineForImage2Image,
            "edit": AutoPipelineForInpainting,
        }
        for task, auto in derivations.items():
            try:
                pipelines[task] = auto.from_pipe(base)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.info("model %s: no %s pipeline (%s)", name, task, exc)
        if not pipelines:
            raise ValueError(f"{class_name} maps to no image task this worker knows")
    for task, pipeline in pipelines.items():
        accepted = inspect.signature(pipeline.__call__).parameters
        if "callback_on_step_end" not in accepted and "callback" not in accepted:
            raise ValueError(
                f"{type(pipeline).__name__} ({task}) has no step callback: the worker could "
                "neither report real progress nor stop it when cancelled"
            )
    vae_scale = int(getattr(base, "vae_scale_factor", 8))
    sample_size = _sample_size(base)
    native = sample_size * vae_scale if sample_size else 512
    min_side = config.min_side or int(hints.get("min_side", vae_scale * 8))
    max_side = config.max_side or int(hints.get("max_side", 2048))
    default_steps = config.default_steps or int(hints.get("default_steps", 30))
    return LoadedModel(
        name=name,
        config=config,
        modality=modality,
        base_class=class_name,
        pipelines=pipelines,
        default_width=int(hints.get("default_width", native)),
        default_height=int(hints.get("default_height", native)),
        default_steps=default_steps,
        min_side=min_side,
        max_side=max_side,
        size_multiple=vae_scale,
    )


def _sample_size(pipeline: Any) -> int | None:
    for component in ("unet", "transformer"):
        module = getattr(pipeline, component, None)
        size = getattr(getattr(module, "config", None), "sample_size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, list | tuple) and size:
            return int(size[0])
    return None


def _read_hints(path: Path) -> dict[str, Any]:
    hints_file = path / MODEL_HINTS_FILE
    if not hints_file.is_file():
        return {}
    data = json.loads(hints_file.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{hints_file} must hold a JSON object")
    return data

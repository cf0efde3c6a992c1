"""The model catalog: which {modality}/{family}/{model}/{task} routes exist, without I/O.

Paths may name a model by its Hugging Face id instead of family/model
(``/image/black-forest-labs/FLUX.1-schnell/t2i`` ≡ ``/image/flux/schnell/t2i``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from render_gateway.formats import IMAGE_FORMATS, VIDEO_FORMATS, Modality
from render_gateway.generation import TASK_MODALITY

Status = Literal["active", "preview", "coming_soon", "deprecated"]
RUNNABLE: frozenset[str] = frozenset({"active", "preview", "deprecated"})


class FormatNotOffered(ValueError):
    """A ``format`` the model does not offer for the task; ``offered`` lists what it does."""

    def __init__(self, message: str, offered: list[str]) -> None:
        super().__init__(message)
        self.offered = offered


class SizeNotOffered(ValueError):
    """An explicit width × height the model's backends cannot take; ``limits`` says what they
    can (``min_side``, ``max_side``, ``size_multiple``; None: not reported)."""

    def __init__(self, message: str, limits: dict[str, int | None]) -> None:
        super().__init__(message)
        self.limits = limits


class CatalogError(LookupError):
    """Unknown model or task; ``known`` lists what exists (for the 404 body)."""

    def __init__(self, message: str, known: list[str]) -> None:
        super().__init__(message)
        self.known = known


@dataclass(frozen=True)
class CatalogModel:
    modality: Modality
    family: str
    model: str
    tasks: tuple[str, ...]
    status: Status = "active"
    aliases: tuple[str, ...] = ()  # Hugging Face ids
    backend_type: str | None = None  # the family's default backend type, if it has one
    default_format: str | None = None
    # What the backends can serve (catalog_check.py, from their model metadata): None means
    # every format of the modality; a task in ``sizeless_tasks`` takes no format at all (its
    # output follows its input image), so none is forwarded and none may be asked for.
    formats: tuple[str, ...] | None = None
    sizeless_tasks: tuple[str, ...] = ()
    # The sides every backend of the model accepts (catalog_check.py; None: not reported), for
    # requests that name a width × height rather than a format (the OpenAI routes' ``size``).
    min_side: int | None = None
    max_side: int | None = None
    size_multiple: int | None = None

    def __post_init__(self) -> None:
        for task in self.tasks:
            if TASK_MODALITY.get(task) != self.modality:
                raise ValueError(f"{self.key}: task {task!r} is not a {self.modality} task")
        known = IMAGE_FORMATS if self.modality == "image" else VIDEO_FORMATS
        if self.default_format is not None and self.default_format not in known:
            raise ValueError(f"{self.key}: unknown default_format {self.default_format!r}")
        for name in self.formats or ():
            if name not in known:
                raise ValueError(f"{self.key}: unknown format {name!r}")

    @property
    def sized_formats(self) -> tuple[str, ...]:
        """The formats offered to the tasks that take one."""
        if self.formats is not None:
            return self.formats
        return tuple(sorted(IMAGE_FORMATS if self.modality == "image" else VIDEO_FORMATS))

    def offered_formats(self, task: str) -> tuple[str, ...]:
        return () if task in self.sizeless_tasks else self.sized_formats

    def format_for(self, task: str, requested: str | None) -> str | None:
        """The format forwarded for a request: the one asked for if offered (else
        FormatNotOffered), or the default where the task takes a format."""
        offered = self.offered_formats(task)
        if requested is None:
            return self.default_format if self.default_format in offered else None
        if requested not in offered:
            if task in self.sizeless_tasks:
                reason = "takes no format (its output has the input image's size)"
            elif not offered:
                reason = "offers no format (none fits its backends' size limits)"
            else:
                reason = f"offers formats {', '.join(offered)}"
            raise FormatNotOffered(
                f"format {requested!r} is not offered: {self.key} {task} {reason}", list(offered)
            )
        return requested

    def check_size(self, task: str, width: int, height: int) -> None:
        """SizeNotOffered unless the task takes a size and every backend takes this one."""
        limits = {"min_side": self.min_side, "max_side": self.max_side,
                  "size_multiple": self.size_multiple}  # fmt: skip
        if task in self.sizeless_tasks:
            raise SizeNotOffered(
                f"{self.key} {task} takes no size (its output has the input image's size)", limits
            )
        for side in (width, height):
            too_small = self.min_side is not None and side < self.min_side
            too_large = self.max_side is not None and side > self.max_side
            if too_small or too_large or (self.size_multiple and side % self.size_multiple):
                raise SizeNotOffered(
                    f"size {width}x{height} is not offered: {self.key} takes sides "
                    f"{self.min_side or 1}–{self.max_side or 'any'}"
                    + (f", multiples of {self.size_multiple}" if self.size_multiple else ""),
                    limits,
                )

    @property
    def key(self) -> str:
        return f"{self.modality}/{self.family}/{self.model}"


class Catalog:
    def __init__(self, models: Iterable[CatalogModel]) -> None:
        self._models: dict[tuple[str, str, str], CatalogModel] = {}
        self._aliases: dict[tuple[str, str], CatalogModel] = {}
        for entry in models:
            key = (entry.modality, entry.family, entry.model)
            if key in self._models:
                raise ValueError(f"{entry.key} appears twice in the catalog")
            self._models[key] = entry
            for alias in entry.aliases:
                owner, sep, name = alias.partition("/")
                if not sep or not owner or not name:
                    raise ValueError(f"{entry.key}: alias {alias!r} is not an 'org/name' id")
                if (entry.modality, alias) in self._aliases:
                    raise ValueError(f"alias {alias!r} names two models")
                self._aliases[(entry.modality, alias)] = entry

    @property
    def models(self) -> list[CatalogModel]:
        return list(self._models.values())

    def resolve(self, modality: str, family: str, model: str, task: str) -> CatalogModel:
        entry = self._models.get((modality, family, model)) or self._aliases.get(
            (modality, f"{family}/{model}")
        )
        if entry is None or entry.status not in RUNNABLE:
            known = sorted(e.key for e in self._models.values() if e.status in RUNNABLE)
            state = "" if entry is None else f" (it is {entry.status})"
            raise CatalogError(f"no {modality} model {family}/{model}{state}", known)
        if task not in entry.tasks:
            raise CatalogError(
                f"{entry.key} does not do task {task!r}", [f"{entry.key}/{t}" for t in entry.tasks]
            )
        return entry

    def matrix(self) -> dict[str, list[dict[str, object]]]:
        """The capability matrix of GET /models."""
        out: dict[str, list[dict[str, object]]] = {"image": [], "video": []}
        for entry in self._models.values():
            out[entry.modality].append(
                {
                    "family": entry.family,
                    "model": entry.model,
                    "tasks": list(entry.tasks),
                    "status": entry.status,
                    "aliases": list(entry.aliases),
                    "backend": entry.backend_type,
                    "formats": list(entry.sized_formats),
                    "default_format": entry.default_format
                    if entry.default_format in entry.sized_formats
                    else None,
                    "formats_by_task": {t: list(entry.offered_formats(t)) for t in entry.tasks},
                }
            )
        return out

    def aliases(self) -> dict[str, dict[str, str]]:
        return {
            alias: {"modality": entry.modality, "family": entry.family, "model": entry.model}
            for (_, alias), entry in self._aliases.items()
        }

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

    def __post_init__(self) -> None:
        for task in self.tasks:
            if TASK_MODALITY.get(task) != self.modality:
                raise ValueError(f"{self.key}: task {task!r} is not a {self.modality} task")
        formats = IMAGE_FORMATS if self.modality == "image" else VIDEO_FORMATS
        if self.default_format is not None and self.default_format not in formats:
            raise ValueError(f"{self.key}: unknown default_format {self.default_format!r}")

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
                    "formats": sorted(
                        IMAGE_FORMATS if entry.modality == "image" else VIDEO_FORMATS
                    ),
                }
            )
        return out

    def aliases(self) -> dict[str, dict[str, str]]:
        return {
            alias: {"modality": entry.modality, "family": entry.family, "model": entry.model}
            for (_, alias), entry in self._aliases.items()
        }

"""The configured catalog checked against what the backends report they can serve.

A backend's ``GET /v2/models/{model}`` metadata (docs/WORKER.md) says which tasks the model
does, which of them take an output size (``sized_tasks``), and the sides it accepts
(``min_side``, ``max_side``, ``size_multiple``). The gateway offers only what every backend of
a model can serve — dispatch may pick any of them — so a route, task or format that would fail
after its 202 is refused before it instead. What a backend does not report (a plain Triton
model has no such parameters) restricts nothing. No I/O here: services.py reads the metadata.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from render_gateway.catalog import Catalog, CatalogModel
from render_gateway.formats import IMAGE_FORMATS, VIDEO_FORMATS


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _names(value: Any) -> frozenset[str] | None:
    if isinstance(value, str):
        return frozenset(n.strip() for n in value.split(",") if n.strip())
    if isinstance(value, list | tuple):
        return frozenset(str(n) for n in value)
    return None


@dataclass(frozen=True)
class ModelCapabilities:
    """One backend model's metadata, as far as it reports any (None: not reported)."""

    tasks: frozenset[str] | None = None
    sized_tasks: frozenset[str] | None = None
    min_side: int | None = None
    max_side: int | None = None
    size_multiple: int | None = None

    @classmethod
    def from_metadata(cls, body: Mapping[str, Any]) -> ModelCapabilities:
        parameters = body.get("parameters")
        if not isinstance(parameters, Mapping):
            return cls()
        return cls(
            tasks=_names(parameters.get("tasks")),
            sized_tasks=_names(parameters.get("sized_tasks")),
            min_side=_int(parameters.get("min_side")),
            max_side=_int(parameters.get("max_side")),
            size_multiple=_int(parameters.get("size_multiple")),
        )

    def takes_size(self, width: int, height: int) -> bool:
        for side in (width, height):
            if self.min_side is not None and side < self.min_side:
                return False
            if self.max_side is not None and side > self.max_side:
                return False
            if self.size_multiple and side % self.size_multiple:
                return False
        return True


def restrict(
    entry: CatalogModel, backends: Iterable[ModelCapabilities]
) -> tuple[CatalogModel | None, list[str]]:
    """The entry as every given backend can serve it (None when no task is left), and one
    note per thing taken away, for the log."""
    reported = list(backends)
    if not reported:
        return entry, []
    notes: list[str] = []
    tasks = [t for t in entry.tasks if all(c.tasks is None or t in c.tasks for c in reported)]
    if dropped := [t for t in entry.tasks if t not in tasks]:
        notes.append(f"{entry.key}: tasks {', '.join(dropped)} not served by its backends")
    if not tasks:
        notes.append(f"{entry.key}: no task left; the model is not offered")
        return None, notes
    sizeless = tuple(
        t for t in tasks if any(c.sized_tasks is not None and t not in c.sized_tasks
                                for c in reported)
    )  # fmt: skip
    if sizeless:
        notes.append(f"{entry.key}: tasks {', '.join(sizeless)} take no format")
    table = IMAGE_FORMATS if entry.modality == "image" else VIDEO_FORMATS
    configured = entry.sized_formats
    formats = tuple(
        name for name in configured if all(c.takes_size(*table[name]) for c in reported)
    )
    if dropped := [name for name in configured if name not in formats]:
        notes.append(f"{entry.key}: formats {', '.join(dropped)} not servable by its backends")
    default = entry.default_format
    if default is not None and default not in formats:
        notes.append(f"{entry.key}: default_format {default!r} not servable; none is forwarded")
        default = None
    mins = [c.min_side for c in reported if c.min_side is not None]
    maxes = [c.max_side for c in reported if c.max_side is not None]
    multiples = [c.size_multiple for c in reported if c.size_multiple]
    restricted = dataclasses.replace(
        entry, tasks=tuple(tasks), formats=formats, sizeless_tasks=sizeless,
        default_format=default, min_side=max(mins) if mins else None,
        max_side=min(maxes) if maxes else None,
        size_multiple=math.lcm(*multiples) if multiples else None,
    )  # fmt: skip
    return restricted, notes


def check_catalog(
    catalog: Catalog, capabilities: Mapping[tuple[str, str], list[ModelCapabilities]]
) -> tuple[Catalog, list[str]]:
    """The catalog as its backends can serve it; ``capabilities`` maps (family, model) to the
    metadata read from each backend serving it (models with none read yet stay as
    configured)."""
    entries: list[CatalogModel] = []
    notes: list[str] = []
    for entry in catalog.models:
        restricted, why = restrict(entry, capabilities.get((entry.family, entry.model), []))
        notes.extend(why)
        if restricted is not None:
            entries.append(restricted)
    return Catalog(entries), notes

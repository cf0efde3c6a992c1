"""What the gateway offers: the configured catalog, narrowed to what the backends serve.

Each backend's model metadata is read once, when it is first seen healthy (at start for those
already up; later, from the readiness probe, for those that come up after). Until a model's
backends have answered, its configured entry is offered unchecked — a queued job simply waits
for them. See catalog_check.py for the rules.
"""

from __future__ import annotations

import logging

from render_gateway.catalog import Catalog
from render_gateway.catalog_check import ModelCapabilities, check_catalog
from render_gateway.inference.backend import InferenceBackend
from render_gateway.scheduling.backend_pool import BackendSpec

log = logging.getLogger(__name__)


class OfferedCatalog:
    def __init__(self, configured: Catalog) -> None:
        self._configured = configured
        self.current = configured
        # backend id → (family, model) → what that backend reported for the model
        self._read: dict[str, dict[tuple[str, str], ModelCapabilities]] = {}
        self._logged: set[str] = set()

    def knows(self, backend_id: str) -> bool:
        return backend_id in self._read

    async def read_backend(self, spec: BackendSpec, client: InferenceBackend) -> bool:
        """Read the metadata of every model ``spec`` serves; True when the offer changed. A
        backend that does not answer is asked again the next time it is seen healthy."""
        found: dict[tuple[str, str], ModelCapabilities] = {}
        for model, backend_model in spec.models.items():
            body = await client.model_metadata(backend_model)
            if body is None:
                log.warning(
                    "backend %s: no metadata for model %r yet; %s/%s offered unchecked",
                    spec.id, backend_model, spec.family, model,
                )  # fmt: skip
                return False
            found[(spec.family, model)] = ModelCapabilities.from_metadata(body)
        self._read[spec.id] = found
        by_model: dict[tuple[str, str], list[ModelCapabilities]] = {}
        for models in self._read.values():
            for key, capabilities in models.items():
                by_model.setdefault(key, []).append(capabilities)
        offered, notes = check_catalog(self._configured, by_model)
        for note in notes:
            if note not in self._logged:  # once per cause, not on every backend
                self._logged.add(note)
                log.warning("catalog: %s", note)
        changed = offered.matrix() != self.current.matrix()
        self.current = offered
        return changed

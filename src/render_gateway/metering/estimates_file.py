"""The cost models survive restarts: kept in ``<data>/estimates.json``, replaced atomically
(write a temporary file, then rename), at a model's first run at once and otherwise at most once
a second, and on stop. A kill -9 loses at most the last second of refinement, never what was
known of a model; a file that cannot be read is set aside and the models start from the floor."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import orjson

from render_gateway.metering.estimates import CostEstimator

log = logging.getLogger(__name__)


class EstimatesFile:
    def __init__(self, path: Path, estimator: CostEstimator, every_seconds: float = 1.0) -> None:
        self.path, self._estimator, self._every = path, estimator, every_seconds
        self._saved_at = 0.0
        self._dirty = False

    def load(self) -> None:
        try:
            entries = orjson.loads(self.path.read_bytes())
            self._estimator.load(entries)
        except FileNotFoundError:
            return
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.error(
                "cost estimates in %s unreadable (%s); starting from the floor", self.path, exc
            )
            self.path.replace(self.path.with_suffix(".unreadable"))

    def learned(self, first: bool) -> None:
        """Called after each observed run; saves when it is worth it."""
        self._dirty = True
        if first or time.monotonic() - self._saved_at >= self._every:
            self.save()

    def save(self) -> None:
        if not self._dirty:
            return
        temporary = self.path.with_suffix(".tmp")
        temporary.write_bytes(orjson.dumps(self._estimator.to_list()))
        os.replace(temporary, self.path)
        self._saved_at, self._dirty = time.monotonic(), False

"""Fixtures shared by the audit tests."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.audit_store import build_log
from support.moto import moto

__all__ = ["moto"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log of four batches (19 records), built once per module."""
    data = tmp_path_factory.mktemp("pristine")
    asyncio.run(build_log(data))
    return data


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the pristine log for one test to tamper with."""
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    yield copy

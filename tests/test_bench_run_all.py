"""bench/run_all.py: `make bench` runs every benchmark under bench/, and its rewrite of
docs/BENCHMARKS.md's generated section keeps what it did not run and nothing else changes."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Scripts under bench/ that are not benchmarks: servers a benchmark starts, the CUDA-only
# check (it needs a GPU and a model directory), and the runner itself.
NOT_BENCHMARKS = {"fixed_backend", "passthrough_proxy", "fastapi_floor", "gpu_smoke", "run_all"}


def run_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "bench" / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_make_bench_runs_every_benchmark_under_bench() -> None:
    module = run_all()
    scripts = {path.stem for path in (ROOT / "bench").glob("*.py")} - NOT_BENCHMARKS
    assert {name for name, _ in module.BENCHMARKS} == scripts
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert target is not None and "bench/run_all.py" in target[1]
    document = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    assert module.rewrite(document, {}).count(module.BEGIN) == 1  # the markers are there


def fake_run(module: ModuleType, name: str, output: str, returncode: int = 0) -> object:
    return module.Run(name, f"python bench/{name}.py --x 1", "2026-12-02T15:00:00Z",
                      "0.50 0.40 0.30", 12.3, returncode, output)  # fmt: skip


def test_the_rewrite_replaces_what_ran_keeps_the_rest_in_order() -> None:
    module = run_all()
    document = f"# Title\n\nhand-written\n\n{module.BEGIN}\n{module.END}\n\ntail\n"
    first = module.rewrite(document, {
        "audit": module.render(fake_run(module, "audit", "write 1\n"), "x86_64", "aaa"),
        "job_store": module.render(fake_run(module, "job_store", "jobs 2\n", 1), "x86_64", "aaa"),
    })  # fmt: skip
    assert first.startswith("# Title\n\nhand-written\n\n") and first.endswith("\ntail\n")
    assert first.index("bench/job_store.py") < first.index("bench/audit.py")  # make bench's order
    assert "**exit code 1**" in first and "commit `aaa`" in first
    second = module.rewrite(first, {
        "audit": module.render(fake_run(module, "audit", "write 3\n"), "x86_64", "bbb"),
    })  # fmt: skip
    assert "write 3" in second and "write 1" not in second  # replaced
    assert "jobs 2" in second  # kept, with its own commit
    assert second.count("commit `aaa`") == 1 and second.count("commit `bbb`") == 1
    assert module.rewrite(second, {}) == second  # nothing run: nothing changes


def test_a_document_without_the_markers_is_refused() -> None:
    module = run_all()
    with pytest.raises(ValueError, match="no generated section"):
        module.rewrite("# Title\n", {})
    with pytest.raises(ValueError):
        module.rewrite(f"{module.END}\n{module.BEGIN}\n", {})

"""The layers' one-way dependencies, read from the source's import statements: the HTTP package
touches no storage technology or store implementation, the core imports nothing of the rest,
stores never import metering or the layers above them, and the packages form no cycle."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "render_gateway"
STORAGE_LIBRARIES = ("sqlite3", "chdb", "duckdb", "pyarrow", "obstore", "clickhouse_connect")
STORE_IMPLEMENTATIONS = ("sqlite_", "memory_", "object_assets", "local_objects")
# Packages in layer order: each may import those before it, never those after.
LAYERS = ("core", "stores", "metering", "application", "api")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules_in(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "render_gateway" and len(parts) > 1 else None


@pytest.mark.parametrize("path", modules_in("api"), ids=lambda p: p.name)
def test_the_http_package_touches_no_storage(path: Path) -> None:
    for module in imports_of(path):
        assert module.split(".")[0] not in STORAGE_LIBRARIES, f"{path.name} imports {module}"
        if module.startswith("render_gateway.stores."):
            name = module.rsplit(".", 1)[1]
            assert not name.startswith(STORE_IMPLEMENTATIONS), f"{path.name} imports {module}"


@pytest.mark.parametrize("path", modules_in("core"), ids=lambda p: p.name)
def test_the_core_imports_only_the_core(path: Path) -> None:
    for module in imports_of(path):
        assert module.split(".")[0] not in STORAGE_LIBRARIES, f"{path.name} imports {module}"
        if module.startswith("render_gateway."):
            # The signed claim's check is pure (it verifies bytes with a key it is given).
            allowed = (
                "render_gateway.core",
                "render_gateway.usage_claim",
                "render_gateway.signing_keys",
            )
            assert module.startswith(allowed), (path.name, module)


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_a_layer_above_it(layer: str) -> None:
    above = set(LAYERS[LAYERS.index(layer) + 1 :])
    for path in modules_in(layer):
        for module in imports_of(path):
            assert package_of(module) not in above, f"{layer}/{path.name} imports {module}"


def test_the_packages_form_no_cycle() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC)
        if len(relative.parts) < 2:
            continue  # top-level modules (config, catalog, …) are leaves of their own
        source = relative.parts[0]
        for module in imports_of(path):
            target = package_of(module)
            if target and target != source and (SRC / target).is_dir():
                graph[source].add(target)
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, f"import cycle: {' → '.join([*visiting, node])}"
        visiting.append(node)
        for target in sorted(graph[node]):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)

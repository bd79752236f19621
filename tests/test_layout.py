"""The package's dependency rules: no import cycles, data_pipelines never imports ppfer_jax, inference needs
nothing from training, and every read of a data split goes through one place (``Context.source``)."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ppfer_jax", "data_pipelines")
INFERENCE = ("ppfer_jax.nets", "ppfer_jax.bundle", "ppfer_jax.anonymize")
TRAINING = ("ppfer_jax.training", "ppfer_jax.stage", "ppfer_jax.stages", "ppfer_jax.recipes", "ppfer_jax.context",
            "ppfer_jax.pipeline")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The project modules a file imports (``from a import b`` counts as a.b where that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def _reachable(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for other in graph[todo.pop()] - seen:
            seen.add(other)
            todo.append(other)
    return seen


def test_no_import_cycles(graph):
    cyclic = sorted(name for name in graph if name in _reachable(graph, name))
    assert cyclic == []


def test_data_pipelines_import_nothing_from_ppfer_jax(graph):
    assert {(a, b) for a, deps in graph.items() if a.startswith("data_pipelines") for b in deps
            if b.startswith("ppfer_jax")} == set()


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_imports_nothing_from_training(graph, module):
    assert {m for m in _reachable(graph, module) if m.startswith(TRAINING)} == set()


def test_only_the_context_loads_data_splits():
    loaders = {_module_name(p) for p in (REPO / "ppfer_jax").rglob("*.py") if "load_split" in p.read_text()}
    assert loaders == {"ppfer_jax.context"}

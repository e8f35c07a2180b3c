"""The house rules of `pipeline/`, read off the import graph with `ast`: no cycles, and imports one way only.

Every import counts, at module level or inside a function; only the imports under `if TYPE_CHECKING:`
are left out, since they never run (they name types for annotations). The direction, top to bottom:

    stages/, pipeline.cli                                  entry points
    pipeline.training, pipeline.evaluation, pipeline.serving
    pipeline.params                                        the schema; reads the name tables below it
    pipeline.model, pipeline.optim
    pipeline.data, pipeline.backbones
    pipeline.runtime
    pipeline.errors

A module may import its own package, or a package on a lower level, never one beside or above it.
`pipeline.tracking` is an adapter at the side: it imports `pipeline.errors` and `pipeline.runtime` (the
process helpers every layer shares) alone, and only the stages and the console commands import it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEVELS: dict[str, int] = {
    "pipeline.errors": 0,
    "pipeline.runtime": 1,
    "pipeline.data": 2,
    "pipeline.backbones": 2,
    "pipeline.model": 3,
    "pipeline.optim": 3,
    "pipeline.params": 4,
    "pipeline.training": 5,
    "pipeline.evaluation": 5,
    "pipeline.serving": 5,
    "pipeline.cli": 6,
    "stages": 6,
}
SIDE_ADAPTER = "pipeline.tracking"
ADAPTER_MAY_IMPORT = {"pipeline.errors", "pipeline.runtime"}
ADAPTER_CALLERS = {"pipeline.cli", "stages"}


def _module_names(root: Path) -> dict[str, Path]:
    names = {}
    for folder in ("pipeline", "stages"):
        for path in (root / folder).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names[".".join(parts)] = path
    return names


def _imported(tree: ast.AST, modules: Iterable[str]) -> set[str]:
    """The project's modules a syntax tree imports anywhere it runs (`if TYPE_CHECKING:` blocks excepted)."""
    known = set(modules)

    def resolve(name: str) -> str | None:
        while name:
            if name in known:
                return name
            name = name.rpartition(".")[0]
        return None

    found: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(filter(None, (resolve(alias.name) for alias in node.names)))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(
                filter(None, (resolve(f"{node.module}.{alias.name}") or resolve(node.module) for alias in node.names))
            )
        pending.extend(ast.iter_child_nodes(node))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports, for every module of `pipeline/` and `stages/` under `root`."""
    modules = _module_names(root)
    graph = {}
    for name, path in modules.items():
        imported = _imported(ast.parse(path.read_text(encoding="utf-8")), modules)
        # A package's __init__ re-exporting its own modules is the package itself, not a dependency.
        graph[name] = {target for target in imported if target != name and not target.startswith(name + ".")}
    return graph


def package_of(module: str) -> str:
    """`pipeline.optim.schedules` -> `pipeline.optim`; `pipeline.errors` -> itself; `stages.train` -> `stages`."""
    parts = module.split(".")
    if parts[0] == "stages":
        return "stages"
    return ".".join(parts[:2])


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def wrong_way_imports(graph: Mapping[str, set[str]]) -> list[str]:
    """Every import against the direction of the house, as `importer -> imported (why)`."""
    problems = []
    for importer, targets in sorted(graph.items()):
        source = package_of(importer)
        for target in sorted(targets):
            destination = package_of(target)
            if source == destination:
                continue
            if destination == SIDE_ADAPTER:
                if source not in ADAPTER_CALLERS:
                    problems.append(f"{importer} -> {target} (only {', '.join(sorted(ADAPTER_CALLERS))} call tracking)")
                continue
            if source == SIDE_ADAPTER:
                if destination not in ADAPTER_MAY_IMPORT:
                    allowed = " and ".join(sorted(ADAPTER_MAY_IMPORT))
                    problems.append(f"{importer} -> {target} (tracking imports {allowed} alone)")
                continue
            if source not in LEVELS or destination not in LEVELS:
                problems.append(f"{importer} -> {target} (a package without a level: add it to LEVELS)")
            elif LEVELS[destination] >= LEVELS[source]:
                problems.append(
                    f"{importer} -> {target} ({destination} is level {LEVELS[destination]}, "
                    f"not below {source}'s {LEVELS[source]})"
                )
    return problems


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(REPO)


def test_no_module_imports_itself_back(graph) -> None:
    assert cycles(graph) == []


def test_imports_run_one_way(graph) -> None:
    assert wrong_way_imports(graph) == []


def test_every_package_has_its_level() -> None:
    packages = {package_of(module) for module in _module_names(REPO)} - {"pipeline", SIDE_ADAPTER}
    assert packages == set(LEVELS)


def test_the_checks_see_cycles_and_wrong_way_imports_inside_functions(tmp_path: Path) -> None:
    # A tiny project breaking each rule once, with the offending imports inside functions.
    files = {
        "pipeline/__init__.py": "",
        "pipeline/errors.py": "def f():\n    import pipeline.runtime.devices\n",
        "pipeline/runtime/__init__.py": "",
        "pipeline/runtime/devices.py": "def g():\n    from pipeline.errors import PipelineError\n",
        "pipeline/model/__init__.py": "",
        # Imports for annotations only never run: not counted.
        "pipeline/model/head.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.training import recipe\n"
        ),
        "pipeline/optim/__init__.py": "",
        "pipeline/optim/schedules.py": "def h():\n    from pipeline.model import head\n",
        "pipeline/tracking/__init__.py": "",
        "pipeline/tracking/runs.py": "from pipeline.model.head import x\n",
        "pipeline/training/__init__.py": "",
        "pipeline/training/recipe.py": "from pipeline.tracking import runs\n",
        "stages/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    built = import_graph(tmp_path)

    assert cycles(built) == [["pipeline.errors", "pipeline.runtime.devices"]]
    assert wrong_way_imports(built) == [
        "pipeline.errors -> pipeline.runtime.devices (pipeline.runtime is level 1, not below pipeline.errors's 0)",
        "pipeline.optim.schedules -> pipeline.model.head (pipeline.model is level 3, not below pipeline.optim's 3)",
        "pipeline.tracking.runs -> pipeline.model.head (tracking imports pipeline.errors and pipeline.runtime alone)",
        "pipeline.training.recipe -> pipeline.tracking.runs (only pipeline.cli, stages call tracking)",
    ]

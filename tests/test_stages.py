"""dvc.yaml's stages list every module they import, so a code change reruns exactly the stages it affects."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _module_file(module: str) -> Path | None:
    base = REPO / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` except those under `if TYPE_CHECKING:`, which never run."""
    nodes: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return nodes


def _local_imports(path: Path) -> set[Path]:
    """Files of `pipeline` and `stages` that `path` imports anywhere it runs (lazily inside functions too)."""
    found: set[Path] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            if module.split(".")[0] in ("pipeline", "stages"):
                parts = module.split(".")
                # `import pipeline.params.train` also runs the packages above it.
                for depth in range(1, len(parts) + 1):
                    file = _module_file(".".join(parts[:depth]))
                    if file is not None:
                        found.add(file)
    return found


def _closure(entry: Path) -> set[Path]:
    seen: set[Path] = set()
    pending = [entry]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        pending.extend(_local_imports(path) - seen)
    return seen


def _covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(REPO)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_imported_module_is_a_dependency(stage: str) -> None:
    module = STAGES[stage]["cmd"].removeprefix("python -m ").strip()
    deps = [dep for dep in STAGES[stage]["deps"] if isinstance(dep, str)]
    imported = _closure(_module_file(module))
    # Empty package markers carry no code.
    missing = sorted(
        str(path.relative_to(REPO)) for path in imported if path.stat().st_size and not _covered(path, deps)
    )
    assert missing == [], f"stage {stage} imports these files but does not list them in dvc.yaml deps"

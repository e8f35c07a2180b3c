"""dvc.yaml's stages depend on the code they import, as `pipeline/` package folders, so a code change reruns
exactly the stages it affects: every package a stage imports is listed, and no other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
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


def _code_dependency(path: Path) -> str:
    """What dvc.yaml lists for a file: its `pipeline/<package>` folder, or the file itself (a top-level module
    of `pipeline`, or a stage's own module)."""
    parts = path.relative_to(REPO).parts
    return str(Path(*parts[:2])) if parts[0] == "pipeline" and len(parts) > 2 else str(Path(*parts))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_dependencies_are_the_packages_the_stage_imports(stage: str) -> None:
    module = STAGES[stage]["cmd"].removeprefix("python -m ").strip()
    declared = {dep for dep in STAGES[stage]["deps"] if isinstance(dep, str) and dep.startswith(("pipeline", "stages"))}
    # Empty package markers carry no code.
    imported = {_code_dependency(path) for path in _closure(_module_file(module)) if path.stat().st_size}
    assert sorted(imported - declared) == [], f"stage {stage} imports these but dvc.yaml does not list them"
    assert sorted(declared - imported) == [], f"stage {stage} lists these in dvc.yaml but does not import them"


def test_no_stage_reads_the_serving_code() -> None:
    # tl-predict's code changes no stage's result, so editing it must rerun nothing (the end-to-end test
    # edits a file there and runs `dvc status`).
    for stage, spec in STAGES.items():
        assert "pipeline/serving" not in spec["deps"], stage
        assert "pipeline/cli" not in spec["deps"], stage


@pytest.mark.parametrize("pipeline_file", ["dvc.yaml", "examples/transfer_ab/dvc.yaml"])
def test_every_code_dependency_exists(pipeline_file: str) -> None:
    # A module that moved leaves a dependency DVC would report missing at the next `dvc repro`.
    path = REPO / pipeline_file
    stages = yaml.safe_load(path.read_text(encoding="utf-8"))["stages"]
    missing = []
    for name, spec in stages.items():
        folder = path.parent / str(spec.get("wdir", "."))
        for dep in spec.get("deps", []):
            if not isinstance(dep, str) or "${" in dep:
                continue
            resolved = (folder / dep).resolve()
            code = resolved.is_relative_to(REPO / "pipeline") or resolved.is_relative_to(REPO / "stages")
            if code and not resolved.exists():
                missing.append(f"{name}: {dep}")
    assert missing == []


# Keys whose `auto` value is derived from other params (pipeline.params.naming), and what it is derived from.
_DERIVED_NAMES = ("tracking.experiment", "tracking.registered_model")
_NAMED_AFTER = ("data.path", "backbone.name")


def _covers(listed: list[str], key: str) -> bool:
    """Whether a stage's params list `key`, itself or a section above it (`data` covers `data.path`)."""
    parts = key.split(".")
    return any(".".join(parts[:depth]) in listed for depth in range(1, len(parts) + 1))


def _listed_params(spec: dict) -> list[str]:
    return [item for item in spec.get("params", []) if isinstance(item, str)]


@pytest.mark.parametrize("pipeline_file", ["dvc.yaml", "examples/transfer_ab/dvc.yaml"])
def test_a_stage_reading_an_auto_name_lists_what_it_is_named_after(pipeline_file: str) -> None:
    # `tracking.experiment: auto` is named after data.path and backbone.name: a stage that lists the
    # name but not those would not rerun when the user points data.path at another dataset.
    stages = yaml.safe_load((REPO / pipeline_file).read_text(encoding="utf-8"))["stages"]
    missing = []
    for name, spec in stages.items():
        spec = spec.get("do", spec)
        listed = _listed_params(spec)
        if any(_covers(listed, key) for key in _DERIVED_NAMES):
            missing += [f"{name}: {key}" for key in _NAMED_AFTER if not _covers(listed, key)]
    assert missing == []


def test_the_stages_that_use_a_name_list_it() -> None:
    # train opens runs in the experiment; evaluate and register look up the registered model's @champion.
    reads = {
        "train": "tracking.experiment",
        "evaluate": "tracking.registered_model",
        "register": "tracking.registered_model",
    }
    assert {stage: _covers(_listed_params(STAGES[stage]), key) for stage, key in reads.items()} == dict.fromkeys(
        reads, True
    )

"""Two pipelines registering to one model name at once: real processes on one SQLite store.

Each child (`tests/tracking/race_child.py`) evaluates its model against the champion of its moment, then both
register at the same instant (they wait for one file). The registry must end with exactly one version per
pipeline, each settled, and `@champion` on the better model by the gate's rule, whichever registers first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]
CHILD = (sys.executable, "-m", "tests.tracking.race_child")
WORSE, BETTER = [0, 1, 1], [0, 1, 2]  # 0.8 and 1.0 on the children's split; the majority baseline is 0.5


def race(store: str, tmp_path: Path, name: str, mappings: list[list[int]]) -> list[dict]:
    """Starts one child per mapping, lets them register at once, returns their registrations in start order."""
    go_file = tmp_path / f"{name}.go"
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    children = [
        subprocess.Popen(
            [*CHILD, store, str(tmp_path / "artifacts"), name, json.dumps(mapping), str(go_file)],
            cwd=REPO,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mapping in mappings
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        go_file.touch()
        outputs = [child.communicate(timeout=300) for child in children]
    finally:
        for child in children:
            child.kill()
    for child, (_, stderr) in zip(children, outputs, strict=True):
        assert child.returncode == 0, stderr
    return [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]


@pytest.fixture
def race_store(tmp_path: Path) -> str:
    """A SQLite store whose experiment and registered model exist (as after an earlier pipeline run)."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    client.create_experiment("race", artifact_location=(tmp_path / "artifacts").as_uri())
    return store


# RACE_REPETITIONS=10 for the figure (10 of 10 must end with the better model as champion).
@pytest.mark.parametrize("repetition", range(int(os.environ.get("RACE_REPETITIONS", "3"))))
def test_the_better_of_two_simultaneous_registrations_is_champion(
    race_store: str, tmp_path: Path, repetition: int
) -> None:
    name = f"race-{repetition}"
    MlflowClient(race_store).create_registered_model(name)
    # Alternate which one starts first, so that the better model is sometimes the first to register.
    mappings = [WORSE, BETTER] if repetition % 2 == 0 else [BETTER, WORSE]
    registrations = race(race_store, tmp_path, name, mappings)
    client = MlflowClient(race_store)
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(int(item.version) for item in versions) == [1, 2]  # one each: none lost, none doubled
    assert {item.tags["gate.settled"] for item in versions} == {"true"}
    better = registrations[mappings.index(BETTER)]
    worse = registrations[mappings.index(WORSE)]
    assert (better["accuracy"], worse["accuracy"]) == (1.0, 0.8)
    assert str(client.get_model_version_by_alias(name, "champion").version) == better["version"]
    by_version = {str(item.version): item.tags for item in versions}
    if int(better["version"]) < int(worse["version"]):
        # The worse one came second and was compared with the better one, promoted meanwhile.
        assert by_version[worse["version"]]["gate.champion_version"] == better["version"]
        assert worse["reason"] == (
            f"accuracy 0.8000 does not beat @champion v{better['version']} 1.0000 on the same test split by more "
            "than the margin 0"
        )
        assert by_version[worse["version"]]["gate.decision"] == "not champion"
    else:
        # The worse one was champion first (it beat the baseline); the better one then beat it, on its split.
        assert by_version[worse["version"]]["gate.decision"] == "champion"
        assert by_version[better["version"]]["gate.champion_version"] == worse["version"]
        assert by_version[better["version"]]["gate.champion_accuracy"] == "0.8"
    assert better["is_champion"] is True

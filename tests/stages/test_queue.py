"""End to end: three experiments queued with `dvc exp run --queue`, run two at a time by `dvc queue start -j 2`
against one tracking store (a new `sqlite:///mlflow.db`), as README's "Many experiments at once" says.

Why its own tiny project and not the session's shared run: every queued experiment runs all six stages in a
temporary copy of the project (.dvc/tmp/exps), whatever the workspace has run, so a copy of the shared run
would save nothing; a 2-convolution .keras backbone keeps the runs short (`build_queue_project`). `dvc queue
start` does not wait for the experiments (it starts the workers and returns), so the test polls `dvc queue
status` until none is queued or running. The `-S` options of `python -m pipeline.cli.seeds --queue-overrides`
(those of `make seeds`) point every copy at the project's store, artifact folder and caches.
"""

from __future__ import annotations

import csv
import io
import subprocess
import time
from pathlib import Path

import pytest

from tests.tiny_project import (
    QUEUE_EXPERIMENT,
    QUEUE_REGISTERED_MODEL,
    build_queue_project,
    dvc,
    dvc_environment,
    queue_seeds,
    queue_statuses,
)

# One worker runs the whole module: its fixture is module-scoped, and xdist's loadgroup would otherwise give
# tests of the module to both workers, each building the fixture, so the three experiments ran twice at once.
pytestmark = pytest.mark.xdist_group("queue")

SEEDS = (1, 2, 3)
QUEUE_DEADLINE_S = 1200
# Between two `dvc queue status` calls: each costs a second or two of a core the experiments are using.
POLL_S = 10
# The statuses of `dvc queue status` of a task that has not ended.
PENDING = ("Queued", "Running")


@pytest.fixture(scope="module")
def queued_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny project after three queued experiments (train.seed 1, 2, 3) ran with `dvc queue start -j 2`."""
    project = tmp_path_factory.mktemp("queue") / "project"
    project.mkdir()
    build_queue_project(project)
    queue_seeds(project, SEEDS)
    assert not (project / "mlflow.db").exists()  # the experiments start on a new store, two at once

    started, output = _start_queue(project, jobs=2)
    try:
        assert started.returncode == 0, output
        assert "Started '2' new experiments task queue workers." in output
        # `dvc queue start` returned while the experiments still wait or run: it does not block.
        assert set(queue_statuses(project).values()) & set(PENDING)
        deadline = time.monotonic() + QUEUE_DEADLINE_S
        while set((statuses := queue_statuses(project)).values()) & set(PENDING):
            assert time.monotonic() < deadline, f"the queue did not finish in {QUEUE_DEADLINE_S} s: {statuses}"
            time.sleep(POLL_S)
    finally:
        dvc(project, "queue", "stop", "--kill")
    if statuses != {f"seed-{seed}": "Success" for seed in SEEDS}:
        logs = "".join(f"\n== dvc queue logs {name}\n{dvc(project, 'queue', 'logs', name).stdout}" for name in statuses)
        pytest.fail(f"queue ended {statuses}{logs}")
    return project


def _start_queue(project: Path, *, jobs: int) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """Runs `dvc queue start -j JOBS`; returns the finished command and its output.

    Why not `tests.tiny_project.dvc`: the workers it starts keep its standard output and error, so a call
    reading them through pipes would wait until the workers exit; a file does not keep it waiting.
    """
    with (project.parent / "queue-start.log").open("w+") as log:
        result = subprocess.run(
            ["dvc", "queue", "start", "-j", str(jobs)],
            cwd=project,
            env=dvc_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
        log.seek(0)
        return result, log.read()


def _client(project: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def _runs_by_experiment(project: Path) -> dict[str, object]:
    client = _client(project)
    runs = client.search_runs([client.get_experiment_by_name(QUEUE_EXPERIMENT).experiment_id])
    return {run.data.tags["dvc.experiment"]: run for run in runs}


def test_each_queued_experiment_is_its_own_finished_run_with_its_params(
    queued_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import params

    runs = _runs_by_experiment(queued_project)
    assert sorted(runs) == [f"seed-{seed}" for seed in SEEDS]
    monkeypatch.chdir(queued_project)  # where backbone.name, a relative path, is checked
    group = params.seed_group_key(params.load(Path("params.yaml")))
    for seed in SEEDS:
        run = runs[f"seed-{seed}"]
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"seed-{seed} · tiny-32px"
        assert run.data.params["train.seed"] == str(seed)
        # The overrides pointed the copy at the project's store, artifacts and caches, outside the group key.
        assert run.data.params["tracking.uri"] == f"sqlite:///{queued_project / 'mlflow.db'}"
        assert run.data.params["train.activation_store.path"] == str(queued_project / ".cache" / "activations")
        assert run.info.artifact_uri.startswith((queued_project / "mlartifacts").as_uri())
        assert (run.data.tags["seed_group"], run.data.tags["seed_group.seed"]) == (group, str(seed))
        assert run.data.tags["dvc.stage"] == "register"
        assert run.data.metrics["test_accuracy"] > 0.5
    # Two at a time: the first two runs were open together.
    spans = sorted((run.info.start_time, run.info.end_time) for run in runs.values())
    assert spans[1][0] < spans[0][1]


def test_the_registry_stays_consistent(queued_project: Path) -> None:
    client = _client(queued_project)
    runs = _runs_by_experiment(queued_project)
    versions = sorted(
        client.search_model_versions(f"name = '{QUEUE_REGISTERED_MODEL}'"), key=lambda item: int(item.version)
    )
    # One version per run, none lost, none doubled, each registration settled and complete.
    assert [str(item.version) for item in versions] == ["1", "2", "3"]
    assert sorted(item.run_id for item in versions) == sorted(run.info.run_id for run in runs.values())
    for item in versions:
        assert (item.tags["gate.settled"], item.tags["pipeline.registration"]) == ("true", "complete")
    aliases = client.get_registered_model(QUEUE_REGISTERED_MODEL).aliases
    assert list(aliases) == ["champion"]
    # Each version decided against the champion the versions before it left, and the alias is where the
    # decisions put it, whichever experiment registered first.
    champion = None
    for item in versions:
        assert item.tags["gate.previous_champion"] == (champion or "none"), item.version
        run = client.get_run(item.run_id)
        assert item.tags["gate.challenger_accuracy"] == str(run.data.metrics["test_accuracy"])
        assert run.data.tags["gate.decision"] == item.tags["gate.decision"]
        if item.tags["gate.decision"] == "champion":
            champion = str(item.version)
    assert str(aliases["champion"]) == champion
    # One test split for all three (data.seed is shared), no significance test: the first best one is champion.
    accuracy = {str(item.version): float(item.tags["gate.challenger_accuracy"]) for item in versions}
    assert champion == min((version for version in accuracy if accuracy[version] == max(accuracy.values())), key=int)


def test_dvc_exp_show_lists_the_three(queued_project: Path) -> None:
    shown = dvc(queued_project, "exp", "show", "--no-pager", "--csv")
    assert shown.returncode == 0, shown.stderr
    rows = {row["Experiment"]: row for row in csv.DictReader(io.StringIO(shown.stdout)) if row["Experiment"]}
    assert sorted(rows) == [f"seed-{seed}" for seed in SEEDS]
    runs = _runs_by_experiment(queued_project)
    for name, row in rows.items():
        assert (row["State"], row["train.seed"]) == ("Success", name.removeprefix("seed-"))
        assert float(row["test.accuracy"]) == runs[name].data.metrics["test_accuracy"]


def test_the_shared_activation_store_holds_one_whole_entry_per_split(queued_project: Path) -> None:
    # The three runs freeze the same backbone over the same images: what the first two wrote at the same time
    # is one train and one val entry (the loser of the rename reads the winner's), which the third read.
    entries = sorted((queued_project / ".cache" / "activations").iterdir())
    assert len(entries) == 2, entries
    for entry in entries:
        assert sorted(path.name for path in entry.iterdir()) == ["activations.npy", "manifest.json"]
    logs = "".join(dvc(queued_project, "queue", "logs", f"seed-{seed}").stdout for seed in SEEDS)
    assert "frozen activations read from the activation store" in logs
    assert "activation store: " not in logs  # no entry found damaged, none left unstored

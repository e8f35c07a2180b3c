"""`tl-seeds` on a real MLflow store: the statistics, the runs left out, the parent run, the default group, errors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli.seeds import main, queue_overrides
from pipeline.evaluation.seed_groups import summarize
from pipeline.params import parse, seed_group_key
from pipeline.tracking.seed_groups import member_tags

GROUP = "0123456789ab"
OTHER = "ba9876543210"
ACCURACIES = (0.90, 0.91, 0.93)


def _store(directory: Path) -> tuple[str, MlflowClient, str]:
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("exp", artifact_location=(directory / "artifacts").as_uri())


def _member(client: MlflowClient, experiment_id: str, group: str, seed: int, status: str, **metrics: float) -> str:
    run_id = client.create_run(
        experiment_id, start_time=seed * 1_000, run_name=f"seed-{seed}", tags=member_tags(group, seed, 42)
    ).info.run_id
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id, status=status)
    return run_id


def _populate(directory: Path) -> tuple[str, list[str]]:
    """Group GROUP: three finished runs, one failed, one killed; group OTHER: one finished run."""
    uri, client, experiment_id = _store(directory)
    members = [
        _member(client, experiment_id, GROUP, 1, "FINISHED", test_accuracy=0.90, test_macro_f1=0.89, test_loss=0.3),
        _member(client, experiment_id, GROUP, 2, "FAILED"),
        _member(client, experiment_id, GROUP, 3, "FINISHED", test_accuracy=0.91, test_macro_f1=0.90, test_loss=0.2),
        _member(client, experiment_id, GROUP, 4, "KILLED", test_accuracy=0.1),
        _member(client, experiment_id, GROUP, 5, "FINISHED", test_accuracy=0.93, test_macro_f1=0.92, test_loss=0.1),
    ]
    _member(client, experiment_id, OTHER, 1, "FINISHED", test_accuracy=0.95)
    return uri, members


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """The two groups, read but never changed (`--no-parent`, or a mistake) by the tests that take it."""
    return _populate(tmp_path_factory.mktemp("seeds"))


@pytest.fixture
def own_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[str, list[str]]:
    """The two groups in a store of the test's own, for the tests that write to it."""
    populated = _populate(tmp_path / "store")
    capsys.readouterr()  # MLflow's lines about creating the database
    return populated


@pytest.fixture(autouse=True)
def no_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _args(store: tuple[str, list[str]], tmp_path: Path, *extra: str) -> list[str]:
    return ["--tracking-uri", store[0], "--experiment", "exp", "--params", str(tmp_path / "none.yaml"), *extra]


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_the_table_lists_the_statistics_and_every_run(store, tmp_path, capsys) -> None:
    assert main(_args(store, tmp_path, "--group", GROUP, "--no-parent")) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    accuracy = summarize("test_accuracy", ACCURACIES)
    assert lines[0] == f"seed group {GROUP}: 5 run(s), 3 finished in the statistics, 1 FAILED, 1 KILLED"
    assert [_cells(line) for line in lines[2:7]] == [
        ["metric", "n", "mean", "std", "min", "max", "ci95_low", "ci95_high"],
        ["-" * 13, "-", "-" * 6, "-" * 6, "-" * 6, "-" * 6, "-" * 8, "-" * 9],
        ["test_accuracy", "3", "0.9133", "0.0153", "0.9000", "0.9300", "0.8754", "0.9513"],
        ["test_macro_f1", "3", "0.9033", "0.0153", "0.8900", "0.9200", "0.8654", "0.9413"],
        ["test_loss", "3", "0.2000", "0.1000", "0.1000", "0.3000", "-0.0484", "0.4484"],
    ]
    assert (f"{accuracy.ci_low:.4f}", f"{accuracy.ci_high:.4f}") == ("0.8754", "0.9513")
    _, failed, _, killed, _ = (run_id[:8] for run_id in store[1])
    assert lines[8] == "runs:"
    assert _cells(lines[12]) == [failed, "2", "42", "FAILED", "no (FAILED: only finished runs count)", "-", "-", "-"]
    assert _cells(lines[14]) == [
        killed,
        "4",
        "42",
        "KILLED",
        "no (KILLED: only finished runs count)",
        "0.1000",
        "-",
        "-",
    ]
    assert captured.err == ""
    assert (
        len(MlflowClient(store[0]).search_runs([MlflowClient(store[0]).get_experiment_by_name("exp").experiment_id]))
        == 6
    )


def test_the_parent_run_is_created_once_and_updated(own_store, tmp_path, capsys) -> None:
    store = own_store
    uri, members = store
    client = MlflowClient(uri)
    assert main(_args(store, tmp_path, "--group", GROUP)) == 0
    created = capsys.readouterr().err
    parent_id = re.fullmatch(rf"parent run (\w+) of seed group {GROUP} created in experiment 'exp'\n", created)[1]
    assert main(_args(store, tmp_path, "--group", GROUP, "--format", "csv")) == 0
    captured = capsys.readouterr()
    assert captured.err == f"parent run {parent_id} of seed group {GROUP} updated in experiment 'exp'\n"
    accuracy = summarize("test_accuracy", ACCURACIES)
    numbers = (accuracy.mean, accuracy.std, 0.9, 0.93, accuracy.ci_low, accuracy.ci_high)
    assert captured.out.splitlines()[1] == ",".join(["test_accuracy", "3", *(repr(value) for value in numbers)])
    parent = client.get_run(parent_id)
    assert {key: parent.data.metrics[key] for key in ("n", "runs", "runs_not_counted", "test_accuracy_n")} == {
        "n": 3.0,
        "runs": 5.0,
        "runs_not_counted": 2.0,
        "test_accuracy_n": 3.0,
    }
    assert parent.data.metrics["test_accuracy_mean"] == accuracy.mean
    assert parent.data.metrics["test_accuracy_std"] == accuracy.std
    assert (parent.data.metrics["test_accuracy_ci_low"], parent.data.metrics["test_accuracy_ci_high"]) == (
        accuracy.ci_low,
        accuracy.ci_high,
    )
    assert parent.data.tags["seed_group.parent"] == GROUP
    assert parent.data.tags["seed_group.members"] == ",".join(members)
    assert "seed_group" not in parent.data.tags
    assert [client.get_run(member).data.tags["mlflow.parentRunId"] for member in members] == [parent_id] * 5
    experiment_id = client.get_experiment_by_name("exp").experiment_id
    assert len(client.search_runs([experiment_id], "tags.`seed_group.parent` = '0123456789ab'")) == 1
    mlflow.set_tracking_uri(uri)
    markdown = mlflow.artifacts.load_text(f"runs:/{parent_id}/seed_group/summary.md")
    assert markdown.startswith(f"# Seed group `{GROUP}`\n\nseed group {GROUP}: 5 run(s), 3 finished")
    assert "| test_accuracy | 3 | 0.9133 | 0.0153 | 0.9000 | 0.9300 | 0.8754 | 0.9513 |" in markdown
    assert mlflow.artifacts.load_text(f"runs:/{parent_id}/seed_group/summary.csv") == captured.out
    runs_csv = mlflow.artifacts.load_text(f"runs:/{parent_id}/seed_group/runs.csv").splitlines()
    assert runs_csv[0] == "run,train.seed,data.seed,status,counted,test_accuracy,test_macro_f1,test_loss"
    assert runs_csv[2] == f"{members[1]},2,42,FAILED,no (FAILED: only finished runs count),,,"


def test_one_finished_run_gives_no_spread_said_plainly(store, tmp_path, capsys) -> None:
    assert main(_args(store, tmp_path, "--group", OTHER, "--format", "markdown", "--no-parent")) == 0
    out = capsys.readouterr().out
    assert "| test_accuracy | 1 | 0.9500 | - | 0.9500 | 0.9500 | - | - |\n" in out
    assert "\nn = 1: no standard deviation or confidence interval; they need at least 2 finished runs" in out


def test_the_default_group_is_the_params_files(own_store, tmp_path, capsys) -> None:
    uri, _ = own_store
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"tracking:\n  uri: {uri}\n  experiment: exp\nhead:\n  dropout: 0.3\n")
    key = seed_group_key(parse({"tracking": {"uri": uri, "experiment": "exp"}, "head": {"dropout": 0.3}}))
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("exp").experiment_id
    _member(client, experiment_id, key, 7, "FINISHED", test_accuracy=0.8)
    _member(client, experiment_id, key, 8, "FINISHED", test_accuracy=0.82)
    output = tmp_path / "out" / "group.md"
    assert main(["--params", str(params_file), "--format", "markdown", "--output", str(output)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[1] == f"wrote seed group {key} (2 finished runs) to {output}"
    assert output.read_text().startswith(f"# Seed group `{key}`\n\nseed group {key}: 2 run(s), 2 finished")


def test_mistakes_give_one_line_and_exit_code_2(store, tmp_path, capsys) -> None:
    assert main(_args(store, tmp_path, "--group", "cccccccccccc")) == 2
    assert capsys.readouterr().err == (
        f"error: no run of seed group cccccccccccc in experiment 'exp'; its groups: {GROUP} (5 runs), {OTHER} "
        "(1 run) (train tags each run with its group; make seeds N=3 runs the current params over 3 seeds)\n"
    )
    assert main(_args(store, tmp_path, "--group", "nope")) == 2
    assert capsys.readouterr().err == (
        "error: --group 'nope' is not a seed group key: 12 hex digits, as tl-seeds prints them and the runs' "
        "seed_group tag holds\n"
    )
    assert main(_args(store, tmp_path)) == 2
    assert capsys.readouterr().err == (
        f"error: no params file {tmp_path / 'none.yaml'}: give --group, or run where it is (its group is the default)\n"
    )
    assert main(["--tracking-uri", store[0], "--experiment", "nope", "--group", GROUP]) == 2
    assert capsys.readouterr().err.startswith("error: no experiment 'nope' in sqlite:///")


def test_a_group_of_failed_runs_only_is_an_error_naming_them(tmp_path, capsys) -> None:
    uri, client, experiment_id = _store(tmp_path)
    failed = _member(client, experiment_id, GROUP, 1, "FAILED")
    running = client.create_run(experiment_id, start_time=5_000, tags=member_tags(GROUP, 2, 42)).info.run_id
    capsys.readouterr()
    assert main(["--tracking-uri", uri, "--experiment", "exp", "--group", GROUP]) == 2
    assert capsys.readouterr().err == (
        f"error: seed group {GROUP} has no finished run with test metrics to aggregate: 2 run(s), "
        f"{failed[:8]} (seed 1, FAILED), {running[:8]} (seed 2, RUNNING)\n"
    )


def test_queue_overrides_make_relative_paths_absolute(tmp_path) -> None:
    assert queue_overrides(parse({}), Path("/work/my project")) == [
        "-S 'tracking.uri=sqlite:////work/my project/mlflow.db'",
        "-S 'tracking.artifact_dir=/work/my project/mlartifacts'",
        "-S 'backbone.cache_dir=/work/my project/.cache/backbones'",
        "-S 'train.activation_store.path=/work/my project/.cache/activations'",
    ]
    absolute = parse(
        {
            "tracking": {"uri": "sqlite:////srv/mlflow.db", "artifact_dir": "/srv/artifacts"},
            "backbone": {"cache_dir": "/srv/weights"},
            "train": {"activation_store": {"path": "/srv/activations"}},
        }
    )
    assert queue_overrides(absolute, tmp_path) == []
    assert queue_overrides(parse({"tracking": {"uri": "http://mlflow:5000"}}), Path("/p"))[0] == (
        "-S tracking.artifact_dir=/p/mlartifacts"
    )


def test_the_command_is_installed_as_tl_seeds() -> None:
    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tl-seeds"] == "pipeline.cli.seeds:main"

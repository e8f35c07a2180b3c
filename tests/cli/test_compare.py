"""`tl-compare` on a real MLflow store of three runs: exact table, sort, limit, CSV and Markdown, errors."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli.compare import main

T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC, in milliseconds


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """Three runs: the second failed before evaluation; the third has a different learning rate and head."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('compare') / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("exp")
    specs = [
        (
            "lite0-32px",
            {"train.base_learning_rate": "0.001", "head.dropout": "0.2", "data.seed": "42"},
            {"test_accuracy": 0.71, "test_macro_f1": 0.7, "test_loss": 0.9},
            0,
            251_000,
            "FINISHED",
        ),
        (
            "lite0-32px",
            {"train.base_learning_rate": "0.01", "head.dropout": "0.2", "data.seed": "42"},
            {},
            600_000,
            612_400,
            "FAILED",
        ),
        (
            "lite0-32px",
            {"train.base_learning_rate": "0.0005", "head.dropout": "0.5", "data.seed": "42"},
            {"test_accuracy": 0.745, "test_macro_f1": 0.7391, "test_loss": 0.8},
            1_200_000,
            4_925_000,
            "FINISHED",
        ),
    ]
    run_ids = []
    for name, params, metrics, start, end, status in specs:
        run_id = client.create_run(experiment_id, start_time=T0 + start, run_name=name).info.run_id
        for key, value in params.items():
            client.log_param(run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        # val_accuracy per epoch: the last one is the column's value.
        for step, value in enumerate((0.5, 0.6 + len(run_ids) / 100)):
            client.log_metric(run_id, "val_accuracy", value, step=step)
        client.set_terminated(run_id, status=status, end_time=T0 + end)
        run_ids.append(run_id)
    return uri, run_ids


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _args(store: tuple[str, list[str]], tmp_path: Path, *extra: str) -> list[str]:
    return ["--tracking-uri", store[0], "--experiment", "exp", "--params", str(tmp_path / "none.yaml"), *extra]


def test_table_shows_differing_params_and_key_metrics_newest_first(store, tmp_path, capsys) -> None:
    assert main(_args(store, tmp_path)) == 0
    first, second, third = (run_id[:8] for run_id in store[1])
    assert capsys.readouterr().out == (
        "run       name        status    start             duration  head.dropout  train.base_learning_rate"
        "  test_accuracy  test_macro_f1  test_loss  val_accuracy\n"
        "--------  ----------  --------  ----------------  --------  ------------  ------------------------"
        "  -------------  -------------  ---------  ------------\n"
        f"{third}  lite0-32px  FINISHED  2026-01-01 00:20    1h 02m  0.5           0.0005                  "
        "         0.7450         0.7391     0.8000        0.6200\n"
        f"{second}  lite0-32px  FAILED    2026-01-01 00:10       12s  0.2           0.01                    "
        "              -              -          -        0.6100\n"
        f"{first}  lite0-32px  FINISHED  2026-01-01 00:00    4m 11s  0.2           0.001                   "
        "         0.7100         0.7000     0.9000        0.6000\n"
    )


def test_sort_and_limit(store, tmp_path, capsys) -> None:
    assert main(_args(store, tmp_path, "--sort", "test_accuracy", "--limit", "2", "--metrics", "test_accuracy")) == 0
    captured = capsys.readouterr()
    first, _, third = (run_id[:8] for run_id in store[1])
    assert [line.split()[0] for line in captured.out.splitlines()[2:]] == [third, first]
    assert captured.out.splitlines()[0].split() == [
        "run",
        "name",
        "status",
        "start",
        "duration",
        "head.dropout",
        "train.base_learning_rate",
        "test_accuracy",
    ]
    assert captured.err == "(2 of 3 runs; --limit 0 shows all)\n"
    assert main(_args(store, tmp_path, "--sort", "duration", "--ascending", "--metrics", "")) == 0
    assert [line.split()[5] for line in capsys.readouterr().out.splitlines()[2:]] == ["12s", "4m", "1h"]


def test_csv_export_to_a_file(store, tmp_path, capsys) -> None:
    output = tmp_path / "out" / "runs.csv"
    assert main(_args(store, tmp_path, "--format", "csv", "--output", str(output), "--metrics", "test_accuracy")) == 0
    assert capsys.readouterr() == ("", f"wrote 3 runs to {output}\n")
    first, second, third = store[1]
    assert output.read_text() == (
        "run_id,name,status,start,duration_s,head.dropout,train.base_learning_rate,test_accuracy\n"
        f"{third},lite0-32px,FINISHED,2026-01-01T00:20:00+00:00,3725.000,0.5,0.0005,0.745\n"
        f"{second},lite0-32px,FAILED,2026-01-01T00:10:00+00:00,12.400,0.2,0.01,\n"
        f"{first},lite0-32px,FINISHED,2026-01-01T00:00:00+00:00,251.000,0.2,0.001,0.71\n"
    )


def test_markdown(store, tmp_path, capsys) -> None:
    assert main(_args(store, tmp_path, "--format", "markdown", "--limit", "1", "--metrics", "test_macro_f1")) == 0
    third = store[1][2][:8]
    assert capsys.readouterr().out == (
        "| run | name | status | start | duration | test_macro_f1 |\n"
        "|---|---|---|---|---:|---:|\n"
        f"| {third} | lite0-32px | FINISHED | 2026-01-01 00:20 | 1h 02m | 0.7391 |\n"
    )


def test_defaults_come_from_params_yaml(store, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(f"tracking:\n  uri: {store[0]}\n  experiment: exp\n")
    assert main(["--limit", "1", "--metrics", ""]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith(store[1][2][:8])


def test_mistakes_give_one_line_and_exit_code_2(store, tmp_path, capsys) -> None:
    assert main(_args(store, tmp_path, "--sort", "f1")) == 2
    assert capsys.readouterr().err.startswith("error: no run logged metric 'f1': sort by start, duration or one of")
    assert main(["--tracking-uri", store[0], "--experiment", "nope", "--params", str(tmp_path / "none.yaml")]) == 2
    assert "error: no experiment 'nope' in sqlite:///" in capsys.readouterr().err
    assert main(["--tracking-uri", f"sqlite:///{tmp_path / 'no.db'}", "--experiment", "exp"]) == 2
    assert capsys.readouterr().err.startswith(f"error: no MLflow database at {tmp_path / 'no.db'}")
    assert not (tmp_path / "no.db").exists()
    assert main(["--params", str(tmp_path / "none.yaml")]) == 2
    assert (
        capsys.readouterr().err == f"error: give --experiment, or run where {tmp_path / 'none.yaml'} is (its "
        "tracking.experiment is the default)\n"
    )


def test_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage: tl-compare" in capsys.readouterr().out


def test_compare_runs_without_loading_tensorflow(store, tmp_path) -> None:
    import subprocess
    import sys

    script = (
        "import sys; from pipeline.cli.compare import main; "
        f"code = main({_args(store, tmp_path, '--limit', '1')!r}); "
        "print(code, 'keras' in sys.modules, 'tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.splitlines()[-1] == "0 False False"


def _group_store(directory: Path) -> str:
    """Seed group A (0.90, 0.91, 0.93 and a failed run) and B (0.94, 0.95, 0.955), with A's parent run."""
    from pipeline.cli.seeds import main as seeds_main
    from pipeline.tracking.seed_groups import member_tags

    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("groups", artifact_location=(directory / "artifacts").as_uri())
    for group, values in (("aaaaaaaaaaaa", (0.90, 0.91, 0.93, None)), ("bbbbbbbbbbbb", (0.94, 0.95, 0.955))):
        for seed, value in enumerate(values, start=1):
            run_id = client.create_run(experiment_id, tags=member_tags(group, seed, 42)).info.run_id
            client.log_param(run_id, "train.seed", str(seed))
            if value is not None:
                client.log_metric(run_id, "test_accuracy", value)
            client.set_terminated(run_id, status="FINISHED" if value is not None else "FAILED")
    assert seeds_main(["--tracking-uri", uri, "--experiment", "groups", "--group", "aaaaaaaaaaaa"]) == 0
    return uri


def test_two_seed_groups_compared_with_welchs_interval(tmp_path, capsys) -> None:
    from scipy import stats

    uri = _group_store(tmp_path)
    capsys.readouterr()
    args = ["--tracking-uri", uri, "--experiment", "groups", "--params", str(tmp_path / "none.yaml")]
    assert main([*args, "--groups", "aaaaaaaaaaaa", "bbbbbbbbbbbb", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    welch = stats.ttest_ind([0.94, 0.95, 0.955], [0.90, 0.91, 0.93], equal_var=False)
    interval = welch.confidence_interval(0.95)
    header, row = captured.out.splitlines()
    assert header == ("metric,n A,mean A,std A,n B,mean B,std B,difference,ci95_low,ci95_high,p (Welch),verdict")
    cells = row.split(",")
    assert cells[0] == "test_accuracy" and (cells[1], cells[4]) == ("3", "3")
    assert [float(cell) for cell in cells[8:11]] == [interval.low, interval.high, welch.pvalue]
    assert cells[11] == "excludes zero: B is higher than A beyond noise"
    assert captured.err.splitlines() == [
        "A: seed group aaaaaaaaaaaa: 4 run(s), 3 finished in the statistics, 1 FAILED",
        *[line for line in captured.err.splitlines() if line.startswith("  not counted: ")],
        "B: seed group bbbbbbbbbbbb: 3 run(s), 3 finished in the statistics",
    ]
    assert re.fullmatch(r"  not counted: \w{32} \(seed 4, FAILED\)", captured.err.splitlines()[1])
    assert main([*args, "--groups", "aaaaaaaaaaaa", "bbbbbbbbbbbb"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "A: seed group aaaaaaaaaaaa, B: seed group bbbbbbbbbbbb; difference: mean B - mean A\n\nmetric "
    )
    assert f"{interval.low:+.4f}    {interval.high:+.4f}" in out
    assert main([*args, "--groups", "aaaaaaaaaaaa", "cccccccccccc"]) == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith(
            "error: no run of seed group cccccccccccc in experiment 'groups'; its groups: aaaaaaaaaaaa (4 runs), "
            "bbbbbbbbbbbb (3 runs)"
        )
    )


def test_the_seed_groups_parent_runs_are_not_listed(tmp_path, capsys) -> None:
    uri = _group_store(tmp_path)
    capsys.readouterr()
    assert main(["--tracking-uri", uri, "--experiment", "groups", "--params", str(tmp_path / "none.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "name", "status", "start", "duration", "train.seed", "test_accuracy"]
    assert len(lines) == 2 + 7

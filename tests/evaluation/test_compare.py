"""Comparison of runs: the differing-params rule, sorting with missing values, limits, cells."""

from __future__ import annotations

import time

import pytest

from pipeline.evaluation.compare import compare_runs, differing_params, display_table, export_table, format_duration
from pipeline.tracking.queries import RunSummary


def _run(run_id: str, *, params: dict[str, str], metrics: dict[str, float], start: int, end: int | None) -> RunSummary:
    return RunSummary(
        run_id=run_id * 32,
        name=f"run-{run_id}",
        status="FINISHED" if end else "RUNNING",
        start_ms=start,
        end_ms=end,
        params=params,
        metrics=metrics,
    )


RUNS = [
    _run("c", params={"lr": "0.01", "seed": "1"}, metrics={"test_accuracy": 0.5}, start=3_000_000, end=None),
    _run("b", params={"lr": "0.001", "seed": "1", "extra": "x"}, metrics={}, start=2_000_000, end=2_062_000),
    _run(
        "a",
        params={"lr": "0.001", "seed": "1"},
        metrics={"test_accuracy": 0.75, "val_accuracy": 0.7},
        start=1_000_000,
        end=1_005_400,
    ),
]


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_differing_params_include_keys_missing_in_some_runs_and_skip_equal_ones() -> None:
    assert differing_params(RUNS) == ("extra", "lr")
    assert differing_params(RUNS[1:]) == ("extra",)
    assert differing_params(RUNS[:1]) == ()


def test_sorting_by_a_metric_puts_runs_without_it_last_in_both_directions() -> None:
    descending = compare_runs(RUNS, sort="test_accuracy")
    assert [run.name for run in descending.runs] == ["run-a", "run-c", "run-b"]
    ascending = compare_runs(RUNS, sort="test_accuracy", ascending=True)
    assert [run.name for run in ascending.runs] == ["run-c", "run-a", "run-b"]
    by_duration = compare_runs(RUNS, sort="duration")
    assert [run.name for run in by_duration.runs] == ["run-b", "run-a", "run-c"]
    assert [run.name for run in compare_runs(RUNS, sort="start", ascending=True).runs] == ["run-a", "run-b", "run-c"]


def test_limit_applies_after_sorting_and_columns_follow_the_listed_runs() -> None:
    comparison = compare_runs(RUNS, sort="test_accuracy", limit=2)
    assert [run.name for run in comparison.runs] == ["run-a", "run-c"]
    assert comparison.total == 3
    assert comparison.params == ("lr",)  # `extra` only differs with run-b, which is not listed
    assert comparison.metrics == ("test_accuracy", "val_accuracy")


def test_a_sort_metric_outside_the_key_metrics_becomes_a_column() -> None:
    runs = [_run("d", params={}, metrics={"loss": 0.3}, start=0, end=1000)]
    assert compare_runs(runs, metrics=("test_accuracy",), sort="loss").metrics == ("loss",)


def test_unknown_sort_metric_and_bad_limit_are_refused() -> None:
    with pytest.raises(
        ValueError,
        match=r"no run logged metric 'f1': sort by start, duration or one of "
        r"test_accuracy, val_accuracy",
    ):
        compare_runs(RUNS, sort="f1")
    with pytest.raises(ValueError, match="limit must be at least 1, received 0"):
        compare_runs(RUNS, limit=0)


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "-"), (0.4, "0s"), (59.6, "1m 00s"), (251, "4m 11s"), (3725, "1h 02m")]
)
def test_durations_read_at_a_glance(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_display_and_export_cells(utc) -> None:
    comparison = compare_runs(RUNS)
    display = display_table(comparison)
    assert display.columns == (
        "run",
        "name",
        "status",
        "start",
        "duration",
        "extra",
        "lr",
        "test_accuracy",
        "val_accuracy",
    )
    assert display.rows == (
        ("cccccccc", "run-c", "RUNNING", "1970-01-01 00:50", "-", "-", "0.01", "0.5000", "-"),
        ("bbbbbbbb", "run-b", "FINISHED", "1970-01-01 00:33", "1m 02s", "x", "0.001", "-", "-"),
        ("aaaaaaaa", "run-a", "FINISHED", "1970-01-01 00:16", "5s", "-", "0.001", "0.7500", "0.7000"),
    )
    export = export_table(comparison)
    assert export.columns[:5] == ("run_id", "name", "status", "start", "duration_s")
    assert export.rows[2] == (
        "a" * 32,
        "run-a",
        "FINISHED",
        "1970-01-01T00:16:40+00:00",
        "5.400",
        "",
        "0.001",
        "0.75",
        "0.7",
    )
    assert export.rows[0][4] == ""

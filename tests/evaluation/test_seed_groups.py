"""pipeline/evaluation/seed_groups.py: a group's statistics equal their formulas; runs left out are listed."""

from __future__ import annotations

import math
import re

import pytest
from scipy import stats

from pipeline.evaluation.seed_groups import (
    SeedGroupError,
    compare_groups,
    difference_table,
    scored_metric_names,
    summarize,
    summarize_group,
)
from pipeline.evaluation.tables import render_text
from pipeline.tracking.seed_groups import GroupRun

# Student's t quantile for 2 degrees of freedom has a closed form: t = (2p - 1) / sqrt(2 p (1 - p)).
T_975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)


def _cells(line: str) -> list[str]:
    """A terminal table's line as its cells (columns are two or more spaces apart)."""
    return re.split(r"\s{2,}", line.strip())


def _run(run_id: str, seed: int, status: str = "FINISHED", commit: str = "c0ffee00", **metrics: float) -> GroupRun:
    return GroupRun(run_id, f"run-{seed}", status, 1_000 * seed, str(seed), "42", commit, dict(metrics))


def test_mean_std_and_interval_equal_the_formulas() -> None:
    values = [0.90, 0.91, 0.93]
    summary = summarize("test_accuracy", values)
    mean = (0.90 + 0.91 + 0.93) / 3
    std = math.sqrt(sum((value - mean) ** 2 for value in values) / 2)
    half = T_975_DF2 * std / math.sqrt(3)
    assert summary.n == 3
    assert summary.mean == pytest.approx(mean, abs=1e-15)
    assert summary.std == pytest.approx(std, rel=1e-12)
    assert (summary.minimum, summary.maximum) == (0.90, 0.93)
    assert summary.ci_low == pytest.approx(mean - half, rel=1e-12)
    assert summary.ci_high == pytest.approx(mean + half, rel=1e-12)
    assert round(summary.std, 6) == 0.015275
    assert (round(summary.ci_low, 4), round(summary.ci_high, 4)) == (0.8754, 0.9513)


def test_one_value_has_no_spread_and_identical_values_a_zero_width_interval() -> None:
    single = summarize("test_accuracy", [0.9])
    assert (single.n, single.mean, single.std, single.ci_low, single.ci_high) == (1, 0.9, None, None, None)
    same = summarize("test_accuracy", [0.5, 0.5])
    assert (same.std, same.ci_low, same.ci_high) == (0.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="no values of test_loss"):
        summarize("test_loss", [])


def test_test_metrics_leading_ones_first_bootstrap_bounds_and_count_skipped() -> None:
    run = _run(
        "r1",
        1,
        test_roc_auc=0.99,
        test_loss=0.3,
        test_accuracy=0.9,
        test_accuracy_ci_low=0.88,
        test_accuracy_ci_high=0.92,
        test_examples=100,
        test_ece=0.02,
        test_macro_f1=0.89,
        val_accuracy=0.91,
        probe_test_accuracy=0.8,
    )
    assert scored_metric_names([run]) == ("test_accuracy", "test_macro_f1", "test_loss", "test_ece", "test_roc_auc")


@pytest.fixture
def group_runs() -> list[GroupRun]:
    return [
        _run("a" * 32, 1, test_accuracy=0.90, test_macro_f1=0.89),
        _run("b" * 32, 2, "FAILED"),
        _run("c" * 32, 3, test_accuracy=0.91, test_macro_f1=0.90),
        _run("d" * 32, 4, "KILLED", test_accuracy=0.5),
        _run("e" * 32, 5, "RUNNING"),
        _run("f" * 32, 6, test_accuracy=0.93, test_macro_f1=0.92, commit="beef0000"),
        _run("0" * 32, 7),
    ]


def test_only_finished_evaluated_runs_count_and_the_others_are_listed(group_runs) -> None:
    summary = summarize_group("0123456789ab", group_runs)
    assert [run.seed for run in summary.counted] == ["1", "3", "6"]
    assert [run.seed for run in summary.not_counted] == ["2", "4", "5", "7"]
    assert summary.metrics[0] == summarize("test_accuracy", [0.90, 0.91, 0.93])
    assert summary.headline() == (
        "seed group 0123456789ab: 7 run(s), 3 finished in the statistics, 1 FAILED, 1 KILLED, 1 RUNNING, "
        "1 not evaluated"
    )
    assert summary.caveats() == [
        "the finished runs come from 2 commits (beef0000, c0ffee00): the group compares code as well as seeds"
    ]
    assert [_cells(line) for line in render_text(summary.runs_table()).splitlines()] == [
        ["run", "train.seed", "data.seed", "status", "counted", "test_accuracy", "test_macro_f1"],
        ["--------", "----------", "---------", "--------", "-" * 63, "-------------", "-------------"],
        ["aaaaaaaa", "1", "42", "FINISHED", "yes", "0.9000", "0.8900"],
        ["bbbbbbbb", "2", "42", "FAILED", "no (FAILED: only finished runs count)", "-", "-"],
        ["cccccccc", "3", "42", "FINISHED", "yes", "0.9100", "0.9000"],
        ["dddddddd", "4", "42", "KILLED", "no (KILLED: only finished runs count)", "0.5000", "-"],
        ["eeeeeeee", "5", "42", "RUNNING", "no (RUNNING: only finished runs count)", "-", "-"],
        ["ffffffff", "6", "42", "FINISHED", "yes", "0.9300", "0.9200"],
        [
            "00000000",
            "7",
            "42",
            "FINISHED",
            "no (FINISHED without test metrics (evaluate did not run on it))",
            "-",
            "-",
        ],
    ]
    assert "Not in the statistics: 4 run(s), listed below." in summary.markdown()
    assert summary.csv().splitlines() == [
        "metric,n,mean,std,min,max,ci95_low,ci95_high",
        ",".join(
            ["test_accuracy", "3"]
            + [repr(value) for value in (0.9133333333333334, summary.metrics[0].std, 0.9, 0.93)]
            + [repr(summary.metrics[0].ci_low), repr(summary.metrics[0].ci_high)]
        ),
        summary.csv().splitlines()[2],
    ]
    assert summary.csv().splitlines()[2].startswith("test_macro_f1,3,0.9033333333333333,")


def test_parent_metrics(group_runs) -> None:
    metrics = summarize_group("0123456789ab", group_runs).parent_metrics()
    accuracy = summarize("test_accuracy", [0.90, 0.91, 0.93])
    assert {key: value for key, value in metrics.items() if key.startswith(("n", "runs", "test_accuracy"))} == {
        "n": 3.0,
        "runs": 7.0,
        "runs_not_counted": 4.0,
        "test_accuracy_n": 3.0,
        "test_accuracy_mean": accuracy.mean,
        "test_accuracy_std": accuracy.std,
        "test_accuracy_min": 0.9,
        "test_accuracy_max": 0.93,
        "test_accuracy_ci_low": accuracy.ci_low,
        "test_accuracy_ci_high": accuracy.ci_high,
    }


def test_one_finished_run_says_plainly_there_is_no_spread() -> None:
    summary = summarize_group("0123456789ab", [_run("a" * 32, 1, test_accuracy=0.9), _run("b" * 32, 2, "FAILED")])
    assert summary.caveats() == [
        "n = 1: no standard deviation or confidence interval; they need at least 2 finished runs (more seeds: "
        "make seeds N=3)"
    ]
    assert _cells(render_text(summary.table()).splitlines()[2]) == [
        "test_accuracy",
        "1",
        "0.9000",
        "-",
        "0.9000",
        "0.9000",
        "-",
        "-",
    ]
    metrics = summary.parent_metrics()
    assert metrics["test_accuracy_mean"] == 0.9 and math.isnan(metrics["test_accuracy_std"])
    assert math.isnan(metrics["test_accuracy_ci_low"]) and math.isnan(metrics["test_accuracy_ci_high"])


def test_a_group_without_runs_or_finished_runs_is_an_error() -> None:
    with pytest.raises(SeedGroupError, match="^seed group 0123456789ab has no runs$"):
        summarize_group("0123456789ab", [])
    with pytest.raises(
        SeedGroupError,
        match=r"^seed group 0123456789ab has no finished run with test metrics to aggregate: 2 run\(s\), "
        r"aaaaaaaa \(seed 1, FAILED\), bbbbbbbb \(seed 2, KILLED\)$",
    ):
        summarize_group("0123456789ab", [_run("a" * 32, 1, "FAILED"), _run("b" * 32, 2, "KILLED")])


def _group(key: str, accuracies: list[float], losses: list[float] | None = None) -> object:
    runs = [
        _run(f"{key}{index:02d}", index, test_accuracy=value, **({"test_loss": losses[index]} if losses else {}))
        for index, value in enumerate(accuracies)
    ]
    return summarize_group(key, runs)


def test_the_difference_of_two_groups_is_welchs_interval() -> None:
    first = _group("a", [0.90, 0.91, 0.93], losses=[0.30, 0.32, 0.31])
    second = _group("b", [0.94, 0.95, 0.955, 0.945], losses=[0.31, 0.29, 0.33, 0.30])
    accuracy, loss = compare_groups(first, second)
    welch = stats.ttest_ind([0.94, 0.95, 0.955, 0.945], [0.90, 0.91, 0.93], equal_var=False)
    interval = welch.confidence_interval(0.95)
    assert (accuracy.ci_low, accuracy.ci_high, accuracy.p_value) == (interval.low, interval.high, welch.pvalue)
    # Welch's interval by hand: the standard error and the Welch-Satterthwaite degrees of freedom.
    va, vb = first.metrics[0].std ** 2 / 3, second.metrics[0].std ** 2 / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert accuracy.difference == pytest.approx(0.9475 - 0.9133333333333333, abs=1e-15)
    assert accuracy.ci_low == pytest.approx(accuracy.difference - half, rel=1e-12)
    assert accuracy.ci_high == pytest.approx(accuracy.difference + half, rel=1e-12)
    assert accuracy.verdict("A", "B") == "excludes zero: B is higher than A beyond noise"
    assert loss.ci_low < 0 < loss.ci_high
    assert loss.verdict("A", "B") == "includes zero: no difference beyond noise"
    reverse = compare_groups(second, first)[0]
    assert reverse.verdict("A", "B") == "excludes zero: B is lower than A beyond noise"
    assert (reverse.ci_low, reverse.ci_high) == pytest.approx((-accuracy.ci_high, -accuracy.ci_low), rel=1e-12)


def test_a_difference_without_an_interval_says_why() -> None:
    single = _group("a", [0.9])
    pair = _group("b", [0.9, 0.92])
    (item,) = compare_groups(single, pair)
    assert (item.ci_low, item.ci_high, item.p_value) == (None, None, None)
    assert item.verdict("A", "B") == "needs at least 2 finished runs in each group (n = 1 and 2)"
    (flat,) = compare_groups(_group("a", [0.9, 0.9]), _group("b", [0.95, 0.95]))
    assert flat.verdict("A", "B") == "neither group varies: Welch's interval is undefined"
    lines = render_text(difference_table([item, flat], first="A", second="B")).splitlines()
    assert _cells(lines[0]) == [
        "metric",
        "n A",
        "mean A",
        "std A",
        "n B",
        "mean B",
        "std B",
        "difference",
        "ci95_low",
        "ci95_high",
        "p (Welch)",
        "verdict",
    ]
    assert _cells(lines[2]) == [
        "test_accuracy",
        "1",
        "0.9000",
        "-",
        "2",
        "0.9100",
        "0.0141",
        "+0.0100",
        "-",
        "-",
        "-",
        "needs at least 2 finished runs in each group (n = 1 and 2)",
    ]

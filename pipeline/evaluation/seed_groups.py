"""A seed group's test metrics over its runs: n, mean, standard deviation, range and a Student-t interval; and
the difference of two groups' means with Welch's interval.

Why: one run's test accuracy is one draw among the seeds. A recipe is known by the mean over several seeds
and its spread; two recipes differ beyond noise only when the interval of the difference of their means
excludes zero. SciPy gives the t quantiles and Welch's test (`scipy.stats.t`, `scipy.stats.ttest_ind`);
only the bookkeeping is ours: which runs count, and saying which do not.

Only FINISHED runs with test metrics enter the statistics. Every other run of the group (FAILED, KILLED,
still RUNNING, or finished before evaluation) is counted and listed with its reason, never dropped unsaid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from pipeline.errors import PipelineError
from pipeline.evaluation.tables import Table, render_csv, render_markdown

if TYPE_CHECKING:
    from pipeline.tracking.seed_groups import GroupRun

CONFIDENCE = 0.95
TEST_PREFIX = "test_"
# Not scores of the model's quality: the per-run bootstrap bounds (their own intervals) and the image count.
SKIPPED_SUFFIXES = ("_ci_low", "_ci_high")
SKIPPED_METRICS = ("test_examples",)
# Listed first, in this order; any other test metric (test_roc_auc, ...) follows by name.
LEADING_METRICS = ("test_accuracy", "test_macro_f1", "test_loss")
FINISHED = "FINISHED"
MISSING = "-"
SHORT_ID = 8


class SeedGroupError(PipelineError, LookupError):
    """A seed group that cannot be aggregated as asked: no runs, or none finished."""


@dataclass(frozen=True)
class MetricSummary:
    """One test metric over a group's finished runs.

    Attributes:
        name: The metric (`test_accuracy`).
        values: Its value in each finished run that logged it, in the group's order.
        n: How many.
        mean: Their mean.
        std: Their sample standard deviation (ddof 1); None below 2 values.
        minimum: The smallest.
        maximum: The largest.
        ci_low: The 95% Student-t interval of the mean, mean -/+ t(0.975, n - 1) * std / sqrt(n); None below 2.
        ci_high: Its upper bound.
    """

    name: str
    values: tuple[float, ...]
    n: int
    mean: float
    std: float | None
    minimum: float
    maximum: float
    ci_low: float | None
    ci_high: float | None


def summarize(name: str, values: Sequence[float]) -> MetricSummary:
    """n, mean, sample standard deviation, range and the 95% Student-t interval of the mean.

    Args:
        name: The metric's name.
        values: At least one value.

    Returns:
        The summary; no standard deviation or interval for a single value.

    Raises:
        ValueError: No values.
    """
    if not values:
        raise ValueError(f"no values of {name}")
    array = np.asarray(values, dtype=np.float64)
    n, mean = len(array), float(array.mean())
    std = ci_low = ci_high = None
    if n >= 2:
        std = float(array.std(ddof=1))
        # scipy returns NaN bounds for a zero scale; identical values have the interval [mean, mean].
        low, high = (
            stats.t.interval(CONFIDENCE, df=n - 1, loc=mean, scale=std / math.sqrt(n)) if std > 0 else (mean, mean)
        )
        ci_low, ci_high = float(low), float(high)
    return MetricSummary(
        name, tuple(float(v) for v in array), n, mean, std, float(array.min()), float(array.max()), ci_low, ci_high
    )


def scored_metric_names(runs: Sequence[GroupRun]) -> tuple[str, ...]:
    """The test metrics any of `runs` logged: accuracy, macro F1 and loss first, then the others by name."""
    names = {
        name
        for run in runs
        for name in run.metrics
        if name.startswith(TEST_PREFIX) and name not in SKIPPED_METRICS and not name.endswith(SKIPPED_SUFFIXES)
    }
    return tuple(name for name in LEADING_METRICS if name in names) + tuple(sorted(names - set(LEADING_METRICS)))


def exclusion_reason(run: GroupRun) -> str | None:
    """Why a member run is not in the statistics (None when it is)."""
    if run.status != FINISHED:
        return f"{run.status}: only finished runs count"
    if not scored_metric_names([run]):
        return "FINISHED without test metrics (evaluate did not run on it)"
    return None


@dataclass(frozen=True)
class GroupSummary:
    """A seed group's statistics and the runs they leave out.

    Attributes:
        group: The group key.
        runs: Every member run, oldest first.
        counted: The runs in the statistics: FINISHED, with test metrics.
        metrics: One summary per test metric.
    """

    group: str
    runs: tuple[GroupRun, ...]
    counted: tuple[GroupRun, ...]
    metrics: tuple[MetricSummary, ...]

    @property
    def not_counted(self) -> tuple[GroupRun, ...]:
        """The members left out of the statistics, each with an `exclusion_reason`."""
        return tuple(run for run in self.runs if exclusion_reason(run) is not None)

    def headline(self) -> str:
        """One line: how many runs, how many counted, and the others by status."""
        left_out: dict[str, int] = {}
        for run in self.not_counted:
            status = run.status if run.status != FINISHED else "not evaluated"
            left_out[status] = left_out.get(status, 0) + 1
        others = "".join(f", {count} {status}" for status, count in left_out.items())
        return (
            f"seed group {self.group}: {len(self.runs)} run(s), {len(self.counted)} finished in the statistics{others}"
        )

    def caveats(self) -> list[str]:
        """Sentences the table needs beside it: a group too small for a spread, runs from several commits."""
        lines = []
        if len(self.counted) < 2:
            lines.append(
                f"n = {len(self.counted)}: no standard deviation or confidence interval; they need at least 2 "
                "finished runs (more seeds: make seeds N=3)"
            )
        commits = sorted({run.git_commit[:SHORT_ID] for run in self.counted if run.git_commit})
        if len(commits) > 1:
            lines.append(
                f"the finished runs come from {len(commits)} commits ({', '.join(commits)}): the group compares "
                "code as well as seeds"
            )
        return lines

    def table(self, *, exact: bool = False) -> Table:
        """The statistics, a row per test metric: 4 decimals to read, or unrounded (`exact`) for CSV."""
        columns = ("metric", "n", "mean", "std", "min", "max", "ci95_low", "ci95_high")
        rows = tuple(
            (
                summary.name,
                str(summary.n),
                *(
                    _number(value, exact=exact)
                    for value in (
                        summary.mean,
                        summary.std,
                        summary.minimum,
                        summary.maximum,
                        summary.ci_low,
                        summary.ci_high,
                    )
                ),
            )
            for summary in self.metrics
        )
        return Table(columns=columns, rows=rows, right_aligned=frozenset(columns[1:]))

    def runs_table(self, *, full_ids: bool = False) -> Table:
        """Every member: run id, seeds, status, and whether it counts (the reason when it does not)."""
        names = [summary.name for summary in self.metrics]
        columns = ("run", "train.seed", "data.seed", "status", "counted", *names)
        rows = tuple(
            (
                run.run_id if full_ids else run.run_id[:SHORT_ID],
                run.seed or MISSING,
                run.data_seed or MISSING,
                run.status,
                "yes" if exclusion_reason(run) is None else f"no ({exclusion_reason(run)})",
                *(_number(run.metrics.get(name), exact=full_ids) for name in names),
            )
            for run in self.runs
        )
        return Table(columns=columns, rows=rows, right_aligned=frozenset(names))

    def markdown(self) -> str:
        """The report: the headline, the statistics, what they leave out, and the member runs."""
        parts = [f"# Seed group `{self.group}`\n\n{self.headline()}.\n\n", render_markdown(self.table())]
        parts += [f"\n{line}.\n" for line in self.caveats()]
        if self.not_counted:
            parts.append(f"\nNot in the statistics: {len(self.not_counted)} run(s), listed below.\n")
        parts += ["\n## Runs\n\n", render_markdown(self.runs_table())]
        return "".join(parts)

    def csv(self) -> str:
        """The statistics as CSV, unrounded."""
        return render_csv(self.table(exact=True))

    def parent_metrics(self) -> dict[str, float]:
        """The aggregate as metrics of the group's parent run.

        `n` (finished runs counted), `runs` (every member), `runs_not_counted`, and per test metric `_n`,
        `_mean`, `_std`, `_min`, `_max`, `_ci_low`, `_ci_high`. A spread that cannot be computed (n < 2) is
        NaN, so that a parent run updated after a run was deleted does not keep an earlier value.
        """
        metrics = {"n": float(len(self.counted)), "runs": float(len(self.runs))}
        metrics["runs_not_counted"] = float(len(self.not_counted))
        for summary in self.metrics:
            values = {
                "n": float(summary.n),
                "mean": summary.mean,
                "std": summary.std,
                "min": summary.minimum,
                "max": summary.maximum,
                "ci_low": summary.ci_low,
                "ci_high": summary.ci_high,
            }
            metrics.update({f"{summary.name}_{key}": math.nan if v is None else v for key, v in values.items()})
        return metrics


def summarize_group(group: str, runs: Sequence[GroupRun]) -> GroupSummary:
    """The statistics of a group's finished runs, with every other run kept for the listing.

    Args:
        group: The group key.
        runs: Every member run (`pipeline.tracking.seed_groups.group_runs`).

    Returns:
        The summary.

    Raises:
        SeedGroupError: No runs, or no finished run with test metrics (the message counts them by status).
    """
    if not runs:
        raise SeedGroupError(f"seed group {group} has no runs")
    counted = tuple(run for run in runs if exclusion_reason(run) is None)
    if not counted:
        listed = ", ".join(f"{run.run_id[:SHORT_ID]} (seed {run.seed or MISSING}, {run.status})" for run in runs)
        raise SeedGroupError(
            f"seed group {group} has no finished run with test metrics to aggregate: {len(runs)} run(s), {listed}"
        )
    metrics = tuple(
        summarize(name, [run.metrics[name] for run in counted if name in run.metrics])
        for name in scored_metric_names(counted)
    )
    return GroupSummary(group=group, runs=tuple(runs), counted=counted, metrics=metrics)


@dataclass(frozen=True)
class GroupDifference:
    """The difference of one test metric's mean between two groups (second minus first), with Welch's interval.

    Attributes:
        metric: The metric.
        first: The first group's summary of it.
        second: The second group's.
        difference: second.mean - first.mean.
        ci_low: The 95% Welch interval of the difference (`scipy.stats.ttest_ind(equal_var=False)`); None when it
            cannot be computed (`reason` says why).
        ci_high: Its upper bound.
        p_value: Welch's two-sided p-value; None as above.
        reason: Why there is no interval, else None.
    """

    metric: str
    first: MetricSummary
    second: MetricSummary
    difference: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    reason: str | None

    def verdict(self, first: str, second: str) -> str:
        """In words: whether the interval excludes zero, and which way (`first`, `second`: the groups' names)."""
        if self.ci_low is None or self.ci_high is None:
            return str(self.reason)
        if self.ci_low > 0 or self.ci_high < 0:
            direction = "higher" if self.difference > 0 else "lower"
            return f"excludes zero: {second} is {direction} than {first} beyond noise"
        return "includes zero: no difference beyond noise"


def compare_groups(first: GroupSummary, second: GroupSummary) -> tuple[GroupDifference, ...]:
    """For each test metric both groups have, the difference of their means and its 95% Welch interval.

    Args:
        first: The reference group.
        second: The group compared with it; differences are second - first.

    Returns:
        One difference per shared metric, in the first group's order.
    """
    seconds = {summary.name: summary for summary in second.metrics}
    differences = []
    for a in first.metrics:
        b = seconds.get(a.name)
        if b is None:
            continue
        difference, low, high, p_value, reason = b.mean - a.mean, None, None, None, None
        if min(a.n, b.n) < 2:
            reason = f"needs at least 2 finished runs in each group (n = {a.n} and {b.n})"
        elif a.std == 0 and b.std == 0:
            reason = "neither group varies: Welch's interval is undefined"
        else:
            result = stats.ttest_ind(b.values, a.values, equal_var=False)
            interval = result.confidence_interval(CONFIDENCE)
            low, high, p_value = float(interval.low), float(interval.high), float(result.pvalue)
        differences.append(GroupDifference(a.name, a, b, difference, low, high, p_value, reason))
    return tuple(differences)


def difference_table(differences: Sequence[GroupDifference], *, first: str, second: str, exact: bool = False) -> Table:
    """The comparison of two groups, a row per metric: each group's n and mean ± std, the difference, its
    interval, Welch's p-value and the verdict in words."""
    columns = (
        "metric",
        f"n {first}",
        f"mean {first}",
        f"std {first}",
        f"n {second}",
        f"mean {second}",
        f"std {second}",
        "difference",
        "ci95_low",
        "ci95_high",
        "p (Welch)",
        "verdict",
    )
    rows = tuple(
        (
            item.metric,
            str(item.first.n),
            _number(item.first.mean, exact=exact),
            _number(item.first.std, exact=exact),
            str(item.second.n),
            _number(item.second.mean, exact=exact),
            _number(item.second.std, exact=exact),
            _number(item.difference, exact=exact, signed=True),
            _number(item.ci_low, exact=exact, signed=True),
            _number(item.ci_high, exact=exact, signed=True),
            _number(item.p_value, exact=exact),
            item.verdict(first, second),
        )
        for item in differences
    )
    return Table(columns=columns, rows=rows, right_aligned=frozenset(columns[1:-1]))


def _number(value: float | None, *, exact: bool, signed: bool = False) -> str:
    if value is None:
        return "" if exact else MISSING
    if exact:
        return repr(value)
    return f"{value:+.4f}" if signed else f"{value:.4f}"

"""The runs of an experiment side by side: status, the params that differ between them, key metrics, duration.

Why: every run logs some hundred flattened params, nearly all the same from run to run; what tells
runs apart is the few that differ, next to the test scores they gave. The MLflow UI shows this only
after choosing columns by hand; `tl-compare` (pipeline/cli/compare.py) prints it in one command.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError
from pipeline.evaluation.tables import Table

if TYPE_CHECKING:
    from pipeline.tracking.queries import RunSummary

KEY_METRICS: tuple[str, ...] = ("test_accuracy", "test_macro_f1", "test_loss", "val_accuracy")
# Sort keys besides metric names.
SORT_START = "start"
SORT_DURATION = "duration"
MISSING = "-"
SHORT_ID = 8


class ComparisonError(PipelineError, ValueError):
    """The runs cannot be compared as asked (a sort metric no run logged); the message lists what can be."""


@dataclass(frozen=True)
class Comparison:
    """The runs to show, in order, and the columns they are compared on.

    Attributes:
        runs: The listed runs, sorted and limited.
        total: How many runs the experiment holds.
        params: Keys of the params whose values differ between the listed runs (sorted).
        metrics: The metric columns: the requested ones that at least one listed run logged.
    """

    runs: tuple[RunSummary, ...]
    total: int
    params: tuple[str, ...]
    metrics: tuple[str, ...]


def differing_params(runs: Sequence[RunSummary]) -> tuple[str, ...]:
    """Keys of the params whose values are not the same in every run (a key missing in a run differs).

    Args:
        runs: The runs.

    Returns:
        The keys, sorted.
    """
    keys = sorted({key for run in runs for key in run.params})
    return tuple(key for key in keys if len({run.params.get(key) for run in runs}) > 1)


def duration_seconds(run: RunSummary) -> float | None:
    """Wall time from start to end; None for a run that has not ended."""
    return None if run.end_ms is None else (run.end_ms - run.start_ms) / 1000


def compare_runs(
    runs: Sequence[RunSummary],
    *,
    metrics: Sequence[str] = KEY_METRICS,
    sort: str | None = None,
    ascending: bool = False,
    limit: int | None = None,
) -> Comparison:
    """Sorts and limits the runs, then picks the columns that tell them apart.

    Args:
        runs: Every run of the experiment (newest first, as `tracking.experiment_runs` gives them).
        metrics: Metric columns wanted, in order.
        sort: A metric name, `start` or `duration`; None keeps the given order. Runs without a value
            for it come last either way.
        ascending: Smallest first (default: largest first).
        limit: Keep at most this many runs after sorting; None keeps all.

    Returns:
        The comparison.

    Raises:
        ComparisonError: `sort` names a metric no run logged.
        ValueError: `limit` is below 1.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, received {limit}")
    ordered = list(runs)
    if sort is not None:
        ordered = _sorted(ordered, sort, ascending=ascending)
    total = len(ordered)
    listed = tuple(ordered[:limit] if limit is not None else ordered)
    wanted = list(dict.fromkeys([*metrics, sort] if sort not in (None, SORT_START, SORT_DURATION) else metrics))
    shown = tuple(name for name in wanted if any(name in run.metrics for run in listed))
    return Comparison(runs=listed, total=total, params=differing_params(listed), metrics=shown)


def _sorted(runs: list[RunSummary], sort: str, *, ascending: bool) -> list[RunSummary]:
    if sort == SORT_START:
        values: list[float | None] = [float(run.start_ms) for run in runs]
    elif sort == SORT_DURATION:
        values = [duration_seconds(run) for run in runs]
    else:
        if not any(sort in run.metrics for run in runs):
            logged = sorted({name for run in runs for name in run.metrics})
            raise ComparisonError(
                f"no run logged metric {sort!r}: sort by {SORT_START}, {SORT_DURATION} or one of "
                f"{', '.join(logged) or 'no metric yet'}"
            )
        values = [run.metrics.get(sort) for run in runs]
    present = [(value, position) for position, value in enumerate(values) if value is not None]
    # Python's sort is stable: equal values keep the given (newest-first) order in both directions.
    present.sort(key=lambda item: item[0] if ascending else -item[0])
    missing = [position for position, value in enumerate(values) if value is None]
    return [runs[position] for _, position in present] + [runs[position] for position in missing]


def format_duration(seconds: float | None) -> str:
    """`1h 02m`, `4m 11s` or `12s`; `-` for a run that has not ended."""
    if seconds is None:
        return MISSING
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _local_time(milliseconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(milliseconds / 1000).astimezone()


def display_table(comparison: Comparison) -> Table:
    """The comparison for reading: short run ids, local start minute, rounded metrics.

    Args:
        comparison: What `compare_runs` returned.

    Returns:
        Columns run, name, status, start, duration, then each differing param, then each metric.
    """
    columns = ("run", "name", "status", "start", "duration", *comparison.params, *comparison.metrics)
    rows = tuple(
        (
            run.run_id[:SHORT_ID],
            run.name,
            run.status,
            _local_time(run.start_ms).strftime("%Y-%m-%d %H:%M"),
            format_duration(duration_seconds(run)),
            *(run.params.get(key, MISSING) for key in comparison.params),
            *(f"{run.metrics[name]:.4f}" if name in run.metrics else MISSING for name in comparison.metrics),
        )
        for run in comparison.runs
    )
    return Table(columns=columns, rows=rows, right_aligned=frozenset(("duration", *comparison.metrics)))


def export_table(comparison: Comparison) -> Table:
    """The comparison for other programs (CSV): full run ids, ISO start times, seconds, unrounded metrics.

    Args:
        comparison: What `compare_runs` returned.

    Returns:
        Columns run_id, name, status, start, duration_s, each differing param, each metric; a missing
        value is an empty cell.
    """
    columns = ("run_id", "name", "status", "start", "duration_s", *comparison.params, *comparison.metrics)
    rows = []
    for run in comparison.runs:
        seconds = duration_seconds(run)
        rows.append(
            (
                run.run_id,
                run.name,
                run.status,
                _local_time(run.start_ms).isoformat(timespec="seconds"),
                "" if seconds is None else f"{seconds:.3f}",
                *(run.params.get(key, "") for key in comparison.params),
                *(repr(run.metrics[name]) if name in run.metrics else "" for name in comparison.metrics),
            )
        )
    return Table(columns=columns, rows=tuple(rows), right_aligned=frozenset(("duration_s", *comparison.metrics)))

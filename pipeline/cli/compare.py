"""`tl-compare`: the runs of an experiment as a table: status, the params that differ, key metrics, duration.

Why `tl-` (transfer learning): ImageMagick installs a `compare` command, and many systems have it on PATH.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cli import settings
from pipeline.errors import USER_ERROR_EXIT, PipelineError

if TYPE_CHECKING:
    from pipeline.evaluation.compare import Comparison
    from pipeline.tracking.queries import RunSummary

FORMATS = ("table", "csv", "markdown")
DEFAULT_LIMIT = 20


def build_parser() -> argparse.ArgumentParser:
    """The command line of `tl-compare`."""
    from pipeline.evaluation.compare import KEY_METRICS, SORT_DURATION, SORT_START

    parser = argparse.ArgumentParser(
        prog="tl-compare",
        description="Show the runs of an MLflow experiment side by side: status, start, duration, the params "
        "whose values differ between the listed runs, and key metrics (the last logged value of each).",
        epilog="Defaults come from params.yaml's tracking section; MLFLOW_TRACKING_URI overrides tracking.uri. "
        "Example: tl-compare --sort test_accuracy --limit 5 --format markdown --output runs.md",
    )
    parser.add_argument("--experiment", help="experiment name (default: params.yaml's tracking.experiment)")
    settings.add_store_arguments(parser)
    parser.add_argument(
        "--sort",
        metavar="KEY",
        help=f"sort by a metric (largest first), or by {SORT_START} or {SORT_DURATION}; default: newest first",
    )
    parser.add_argument("--ascending", action="store_true", help="sort smallest first")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help="show the first N runs after sorting; 0 shows all (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics",
        default=",".join(KEY_METRICS),
        help="comma-separated metric columns, shown when at least one run logged them (default: %(default)s)",
    )
    parser.add_argument(
        "--groups",
        nargs=2,
        metavar=("KEY_A", "KEY_B"),
        help="compare two seed groups instead (tl-seeds prints a group's key): for each test metric, mean B - mean A "
        "with its 95%% Welch interval, and whether it excludes zero; --sort, --limit and --metrics do not apply",
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: %(default)s)")
    parser.add_argument("--output", type=Path, metavar="FILE", help="write to FILE instead of standard output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `tl-compare`; returns the exit code (2 for a mistake the user can fix).

    Args:
        argv: The arguments (default: the command line).

    Returns:
        The exit code.
    """
    args = build_parser().parse_args(argv)
    if args.limit < 0:
        print(f"error: --limit must be 0 (all) or more, received {args.limit}", file=sys.stderr)
        return USER_ERROR_EXIT
    settings.quiet_libraries()
    try:
        defaults = settings.project_defaults(args.params)
        experiment = settings.required(
            args.experiment or defaults.experiment, "--experiment", "tracking.experiment", args.params
        )
        uri = settings.tracking_uri(args.tracking_uri, defaults, args.params)
        if args.groups is not None:
            return _compare_groups(uri, experiment, args)
        from pipeline.tracking.queries import experiment_runs

        runs = experiment_runs(uri, experiment)
        if not runs:
            print(f"experiment {experiment!r} has no runs yet", file=sys.stderr)
            return 0
        rendered, comparison = _render(runs, args)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    settings.write_output(rendered, args.output, written=f"{len(comparison.runs)} runs")
    if len(comparison.runs) < comparison.total:
        print(f"({len(comparison.runs)} of {comparison.total} runs; --limit 0 shows all)", file=sys.stderr)
    return 0


def _compare_groups(uri: str, experiment: str, args: argparse.Namespace) -> int:
    """Two seed groups side by side: each one's headline on stderr (the runs left out named), the table out."""
    from pipeline.cli.seeds import group_key, load_group
    from pipeline.evaluation.seed_groups import compare_groups, difference_table
    from pipeline.evaluation.tables import render_csv, render_markdown, render_text

    first, second = (load_group(uri, experiment, group_key(key, args.params)) for key in args.groups)
    for label, summary in (("A", first), ("B", second)):
        print(f"{label}: {summary.headline()}", file=sys.stderr)
        for run in summary.not_counted:
            print(f"  not counted: {run.run_id} (seed {run.seed or '-'}, {run.status})", file=sys.stderr)
    table = difference_table(compare_groups(first, second), first="A", second="B", exact=args.format == "csv")
    legend = f"A: seed group {first.group}, B: seed group {second.group}; difference: mean B - mean A\n\n"
    renderers = {"csv": render_csv, "markdown": render_markdown, "table": render_text}
    rendered = ("" if args.format == "csv" else legend) + renderers[args.format](table)
    settings.write_output(
        rendered, args.output, written=f"the comparison of seed groups {first.group} and {second.group}"
    )
    return 0


def _render(runs: list[RunSummary], args: argparse.Namespace) -> tuple[str, Comparison]:
    from pipeline.evaluation.compare import compare_runs, display_table, export_table
    from pipeline.evaluation.tables import render_csv, render_markdown, render_text

    metrics = [name.strip() for name in args.metrics.split(",") if name.strip()]
    comparison = compare_runs(runs, metrics=metrics, sort=args.sort, ascending=args.ascending, limit=args.limit or None)
    if args.format == "csv":
        return render_csv(export_table(comparison)), comparison
    table = display_table(comparison)
    return (render_markdown(table) if args.format == "markdown" else render_text(table)), comparison


if __name__ == "__main__":
    sys.exit(main())

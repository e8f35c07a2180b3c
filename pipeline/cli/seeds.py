"""`tl-seeds`: a seed group's test metrics over its runs (n, mean, std, min, max, 95% Student-t interval), written
as a table, Markdown or CSV and on the group's parent run in MLflow.

Why a command and not a DVC stage: a group spans DVC experiments (one per seed, each in its own temporary
copy of the project), while a stage runs inside one of them.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cli import settings
from pipeline.errors import USER_ERROR_EXIT, PipelineError

if TYPE_CHECKING:
    from pipeline.evaluation.seed_groups import GroupSummary
    from pipeline.params import PipelineParams

FORMATS = ("table", "markdown", "csv")
KEY_PATTERN = re.compile(r"[0-9a-f]{12}")
# The artifacts of the parent run.
SUMMARY_MD = "seed_group/summary.md"
SUMMARY_CSV = "seed_group/summary.csv"
RUNS_CSV = "seed_group/runs.csv"
SQLITE_PREFIX = "sqlite:///"


def build_parser() -> argparse.ArgumentParser:
    """The command line of `tl-seeds`."""
    parser = argparse.ArgumentParser(
        prog="tl-seeds",
        description="Aggregate a seed group, the runs of one configuration that differ only in their seeds: n, "
        "mean, standard deviation, min, max and the 95% Student-t interval of every test metric over its "
        "FINISHED runs; failed, killed and running members are counted and listed. The result is also logged on "
        "the group's parent run (created once, then updated), which the MLflow UI shows with the runs under it.",
        epilog="Run the current params over 3 seeds first: make seeds N=3 (docs/tracking.md, Seed groups). "
        "Compare two groups: tl-compare --groups KEY_A KEY_B.",
    )
    parser.add_argument(
        "--group", metavar="KEY", help="the group's key, tag seed_group of its runs (default: params.yaml's)"
    )
    parser.add_argument("--experiment", help="experiment name (default: params.yaml's tracking.experiment)")
    settings.add_store_arguments(parser)
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: %(default)s)")
    parser.add_argument("--output", type=Path, metavar="FILE", help="write to FILE instead of standard output")
    parser.add_argument(
        "--no-parent", action="store_true", help="only print: do not create or update the group's parent run"
    )
    parser.add_argument(
        "--queue-overrides",
        action="store_true",
        help="print the -S options that make a queued `dvc exp run` use this project's tracking store, artifact "
        "folder and caches (a queued experiment runs in a temporary copy); used by `make seeds`",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `tl-seeds`; returns the exit code (2 for a mistake the user can fix).

    Args:
        argv: The arguments (default: the command line).

    Returns:
        The exit code.
    """
    args = build_parser().parse_args(argv)
    settings.quiet_libraries()
    try:
        if args.queue_overrides:
            config = _load_params(args.params, "run in the project folder, or give --params")
            print(" ".join(queue_overrides(config, Path.cwd())))
            return 0
        defaults = settings.project_defaults(args.params)
        experiment = settings.required(
            args.experiment or defaults.experiment, "--experiment", "tracking.experiment", args.params
        )
        uri = settings.tracking_uri(args.tracking_uri, defaults, args.params)
        group = group_key(args.group, args.params)
        summary = load_group(uri, experiment, group)
        rendered = render(summary, args.format)
        if not args.no_parent:
            run_id, created = _record_parent(uri, experiment, summary)
            verb = "created" if created else "updated"
            print(f"parent run {run_id} of seed group {group} {verb} in experiment {experiment!r}", file=sys.stderr)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    settings.write_output(rendered, args.output, written=f"seed group {group} ({len(summary.counted)} finished runs)")
    return 0


def group_key(option: str | None, params_path: Path) -> str:
    """`--group`, else the group of the params file's configuration.

    Raises:
        SettingsError: Neither, or a key that is not 12 hex digits.
        ParamsError: The params file is invalid.
    """
    if option is None:
        from pipeline import params

        config = _load_params(params_path, "give --group, or run where it is (its group is the default)")
        return params.seed_group_key(config)
    if not KEY_PATTERN.fullmatch(option):
        raise settings.SettingsError(
            f"--group {option!r} is not a seed group key: 12 hex digits, as tl-seeds prints them and the runs' "
            "seed_group tag holds"
        )
    return option


def load_group(tracking_uri: str, experiment: str, group: str) -> GroupSummary:
    """The group's runs from the store, summarised.

    Raises:
        SeedGroupError: No run of the group (the message lists the experiment's groups), or none finished.
        TrackingLookupError: No such experiment.
    """
    from pipeline.evaluation.seed_groups import SeedGroupError, summarize_group
    from pipeline.tracking.seed_groups import experiment_groups, group_runs

    runs = group_runs(tracking_uri, experiment, group)
    if not runs:
        known = experiment_groups(tracking_uri, experiment)
        listed = ", ".join(f"{key} ({count} run{'s' if count > 1 else ''})" for key, count in known.items())
        raise SeedGroupError(
            f"no run of seed group {group} in experiment {experiment!r}; its groups: {listed or 'none'} "
            "(train tags each run with its group; make seeds N=3 runs the current params over 3 seeds)"
        )
    return summarize_group(group, runs)


def render(summary: GroupSummary, output_format: str) -> str:
    """The summary as a terminal table (with the member runs), Markdown, or CSV (the statistics alone)."""
    from pipeline.evaluation.tables import render_text

    if output_format == "csv":
        return summary.csv()
    if output_format == "markdown":
        return summary.markdown()
    caveats = "".join(f"{line}\n" for line in summary.caveats())
    return (
        f"{summary.headline()}\n\n{render_text(summary.table())}{caveats}\nruns:\n{render_text(summary.runs_table())}"
    )


def queue_overrides(config: PipelineParams, root: Path) -> list[str]:
    """`-S key=value` options, shell-quoted, that point a queued experiment at this project's store and caches.

    Why: `dvc exp run --queue` runs each experiment in a temporary copy of the project (.dvc/tmp/exps/...),
    where a relative `sqlite:///mlflow.db` would be a throw-away database, and relative artifact and cache
    folders empty ones. None of these settings is in the seed group's key. `MLFLOW_TRACKING_URI`, when set,
    still wins over `tracking.uri`.

    Args:
        config: The validated params.
        root: The project folder the relative paths are relative to.

    Returns:
        The options, for the relative settings only.
    """
    relative: dict[str, str] = {}
    uri = config.tracking.uri
    if uri.startswith(SQLITE_PREFIX) and not Path(uri.removeprefix(SQLITE_PREFIX)).is_absolute():
        relative["tracking.uri"] = SQLITE_PREFIX + str(root / uri.removeprefix(SQLITE_PREFIX))
    for key, value in (
        ("tracking.artifact_dir", config.tracking.artifact_dir),
        ("backbone.cache_dir", config.backbone.cache_dir),
        ("train.activation_store.path", config.train.activation_store.path),
    ):
        if not Path(value).is_absolute():
            relative[key] = str(root / value)
    return [f"-S {shlex.quote(f'{key}={value}')}" for key, value in relative.items()]


def _load_params(params_path: Path, hint: str) -> PipelineParams:
    from pipeline import params

    if not params_path.is_file():
        raise settings.SettingsError(f"no params file {params_path}: {hint}")
    return params.load(params_path)


def _record_parent(uri: str, experiment: str, summary: GroupSummary) -> tuple[str, bool]:
    from pipeline.evaluation.tables import render_csv
    from pipeline.tracking.seed_groups import record_parent

    markdown = summary.markdown()
    return record_parent(
        uri,
        experiment,
        summary.group,
        members=[run.run_id for run in summary.runs],
        metrics=summary.parent_metrics(),
        tags={"seed_group.summary": summary.headline()},
        artifacts={
            SUMMARY_MD: markdown,
            SUMMARY_CSV: summary.csv(),
            RUNS_CSV: render_csv(summary.runs_table(full_ids=True)),
        },
        note=markdown,
    )


if __name__ == "__main__":
    sys.exit(main())

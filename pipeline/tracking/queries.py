"""Queries of the console commands (`pipeline.cli`): the runs of an experiment, and a run's JSON artifacts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.tracking.runs import TrackingLookupError
from pipeline.tracking.seed_groups import PARENT_TAG


@dataclass(frozen=True)
class RunSummary:
    """One run as the `compare` command shows it, free of MLflow types.

    Attributes:
        run_id: The full run id.
        name: The run name.
        status: RUNNING, FINISHED, FAILED, KILLED or SCHEDULED.
        start_ms: Start time, milliseconds since the epoch.
        end_ms: End time in milliseconds, None while the run has not ended.
        params: Every logged parameter (flattened keys such as `train.base_learning_rate`).
        metrics: The latest value of every metric (the last epoch's `val_accuracy`).
    """

    run_id: str
    name: str
    status: str
    start_ms: int
    end_ms: int | None
    params: dict[str, str]
    metrics: dict[str, float]


def experiment_runs(tracking_uri: str, experiment: str) -> list[RunSummary]:
    """Every active (not deleted) run of an experiment, newest first; not the seed groups' parent runs.

    Why not the parents: they hold a group's aggregate (`tl-seeds`), no params, and would make every param
    column differ.

    Args:
        tracking_uri: The tracking store.
        experiment: The experiment's name.

    Returns:
        The runs, each with its params and latest metrics.

    Raises:
        TrackingLookupError: No experiment of that name; the message lists those that exist.
    """
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(item.name for item in client.search_experiments())
        raise TrackingLookupError(
            f"no experiment {experiment!r} in {tracking_uri}; experiments there: {', '.join(names) or 'none'}"
        )
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return [
        RunSummary(
            run_id=run.info.run_id,
            name=run.info.run_name or "",
            status=run.info.status,
            start_ms=int(run.info.start_time),
            end_ms=int(run.info.end_time) if run.info.end_time else None,
            params=dict(run.data.params),
            metrics={key: float(value) for key, value in run.data.metrics.items()},
        )
        for run in runs
        if PARENT_TAG not in run.data.tags
    ]


def run_artifact_json(tracking_uri: str, run_id: str, path: str) -> Any | None:
    """Reads a JSON artifact of a run; None when the run has no such artifact.

    Args:
        tracking_uri: The tracking store.
        run_id: The run.
        path: The artifact's path in the run (`evaluation/classification_report.json`).

    Returns:
        The parsed JSON, or None.
    """
    mlflow.set_tracking_uri(tracking_uri)
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")
    except (mlflow.exceptions.MlflowException, OSError):
        return None
    return json.loads(text)

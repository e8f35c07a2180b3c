"""pipeline/tracking/queries.py: the runs of an experiment, as tl-compare lists them."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import queries, runs


def test_experiment_runs_newest_first_with_params_and_latest_metrics(store: str) -> None:
    client = MlflowClient(store)
    experiment_id = client.create_experiment("listed")
    older = client.create_run(experiment_id, start_time=1_000, run_name="older").info.run_id
    client.log_param(older, "train.seed", "1")
    client.log_metric(older, "val_accuracy", 0.5, step=0)
    client.log_metric(older, "val_accuracy", 0.75, step=1)
    client.set_terminated(older, status="FINISHED", end_time=61_000)
    newer = client.create_run(experiment_id, start_time=2_000, run_name="newer").info.run_id
    assert queries.experiment_runs(store, "listed") == [
        queries.RunSummary(newer, "newer", "RUNNING", 2_000, None, {}, {}),
        queries.RunSummary(older, "older", "FINISHED", 1_000, 61_000, {"train.seed": "1"}, {"val_accuracy": 0.75}),
    ]
    with pytest.raises(runs.TrackingLookupError, match="no experiment 'nope' in .*; experiments there: .*listed"):
        queries.experiment_runs(store, "nope")

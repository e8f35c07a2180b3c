"""pipeline/tracking/epoch_logger.py: one epoch axis across the fits of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from pipeline.tracking.epoch_logger import EpochLogger
from tests.tracking.conftest import open_run, tiny_model


def test_epochs_of_several_fits_share_one_step_axis(store: str, tmp_path: Path) -> None:
    model = tiny_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    features, labels = np.ones((8, 4), np.float32), np.zeros(8, np.int64)
    with open_run(store, tmp_path) as run:
        model.fit(features, labels, epochs=2, verbose=0, callbacks=[EpochLogger(run)])
        model.fit(features, labels, initial_epoch=2, epochs=5, verbose=0, callbacks=[EpochLogger(run)])
    steps = [metric.step for metric in MlflowClient(store).get_metric_history(run.run_id, "loss")]
    assert steps == [0, 1, 2, 3, 4]

"""A Keras callback that logs every epoch's metrics to the tracking run at the global epoch number.

Why its own module: it is the one part of the tracking that needs Keras, and the rest of
`pipeline.tracking` is imported by console commands that only query runs (`tl-compare`), which should
not pay for TensorFlow's start-up. The train stage makes one for its run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras

if TYPE_CHECKING:
    from pipeline.tracking.runs import TrackedRun
    from pipeline.training.history import PhaseRecord


class EpochLogger(keras.callbacks.Callback):
    """Logs every epoch's metrics at the global epoch number, one batch call per epoch.

    Why not `mlflow.keras.MlflowCallback`: its step restarts at 0 with every `fit`, so the phases
    of fine-tuning would overwrite each other. `pipeline.training.recipe` passes `initial_epoch`, so the
    epoch Keras reports here is already global.
    """

    def __init__(self, run: TrackedRun, *, logged_steps: set[int] | None = None) -> None:
        """Args:
        run: The run.
        logged_steps: Epochs the run already holds (a resumed run): they are not logged again, so that
            an epoch logged before the kill and trained again after it stays one step of each metric.
        """
        super().__init__()
        self._run = run
        self._phase_index: int | None = None
        self._logged = set(logged_steps or ())

    def catch_up(self, rows: list[dict[str, Any]]) -> int:
        """Logs the epochs of a resumed history that the run does not hold yet; returns how many.

        Why: a process killed between its checkpoint and its next log call leaves epochs the checkpoint
        has and the run lacks (and a tracking server that was away loses the ones it did not answer).
        """
        missing = [row for row in rows if int(row["epoch"]) not in self._logged]
        for row in missing:
            metrics = {key: float(value) for key, value in row.items() if key not in ("epoch", "phase_name")}
            self._run.log_metrics(metrics, step=int(row["epoch"]))
            self._logged.add(int(row["epoch"]))
        return len(missing)

    def begin_phase(self, phase: PhaseRecord) -> None:
        """Remembers the phase, logged as metric `phase` with each of its epochs (`fine_tune` calls it)."""
        self._phase_index = phase.index

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch in self._logged:
            return
        self._logged.add(epoch)
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        if self._phase_index is not None:
            metrics["phase"] = float(self._phase_index)
        if metrics:
            self._run.log_metrics(metrics, step=epoch)

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

    def __init__(self, run: TrackedRun) -> None:
        super().__init__()
        self._run = run
        self._phase_index: int | None = None

    def begin_phase(self, phase: PhaseRecord) -> None:
        """Remembers the phase, logged as metric `phase` with each of its epochs (`fine_tune` calls it)."""
        self._phase_index = phase.index

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        if self._phase_index is not None:
            metrics["phase"] = float(self._phase_index)
        if metrics:
            self._run.log_metrics(metrics, step=epoch)

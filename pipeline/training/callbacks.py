"""Keras callbacks of the pipeline: one epoch history across all phases, early stopping per phase, and
the divergence guard that stops a blown-up run (its rule: `pipeline.training.divergence`).

Why: every phase is its own `fit` call, and Keras' `History` (like MLflow's Keras callback) restarts
with each one. The recorder keeps one continuous epoch axis, stamps each epoch with its phase and the
learning rate the optimiser really used, and puts both into `logs` so that callbacks after it (the
tracking logger) see them. The `lr` of an epoch is the one its last step used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras

from pipeline.optim.schedules import learning_rate_used
from pipeline.training.divergence import check_epoch

if TYPE_CHECKING:
    from pipeline.training.history import PhaseRecord, TrainingHistory


class HistoryRecorder(keras.callbacks.Callback):
    """Records every epoch of every phase into one `TrainingHistory`.

    It must come first in the callback list: it adds `lr` to `logs` for the callbacks that follow.
    The phase goes into the history rows, not into `logs`: Keras prints `logs` on every epoch line,
    where a float `phase: 1.0000` means nothing; callbacks that need the phase define `begin_phase`.
    """

    def __init__(self, history: TrainingHistory) -> None:
        super().__init__()
        self.history = history
        self._phase: PhaseRecord | None = None

    def begin_phase(self, phase: PhaseRecord) -> None:
        """Announces the phase the next epochs belong to."""
        self._phase = phase

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._phase is None:
            raise RuntimeError("HistoryRecorder.begin_phase must be called before fit")
        if logs is None:
            logs = {}
        logs["lr"] = learning_rate_used(self.model.optimizer)
        row: dict[str, Any] = {"epoch": epoch, "phase": float(self._phase.index), "phase_name": self._phase.name}
        row.update({key: float(value) for key, value in logs.items()})
        self.history.rows.append(row)


class PhaseEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' early stopping that may not end a phase before its minimum number of epochs.

    Why not Keras' `start_from_epoch`: it also ignores those epochs when it looks for the best weights,
    so a phase whose best epoch came before the minimum would be restored to a worse one. Here every
    epoch of the phase counts for the best; only the stop waits.
    """

    def __init__(self, *, first_epoch: int, min_epochs: int, **settings: Any) -> None:
        super().__init__(**settings)
        self._may_stop_from = first_epoch + min_epochs - 1  # the global index of the phase's last required epoch
        # False while a phase is trained by more than one `fit` (a mid-epoch resume finishes its epoch first):
        # the best weights are then restored at the end of the phase, not at the end of each `fit`.
        self.restore_at_train_end = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        if epoch < self._may_stop_from and self.stopped_epoch == epoch:
            self.model.stop_training = False
            self.stopped_epoch = 0

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.restore_at_train_end or self.model.stop_training:
            super().on_train_end(logs)


def early_stopping(
    *,
    monitor: str,
    patience: int,
    min_delta: float,
    restore_best: bool,
    first_epoch: int = 0,
    min_epochs: int = 0,
) -> keras.callbacks.EarlyStopping:
    """Early stopping for one phase; with `restore_best` the phase ends on its best epoch's weights.

    Keras restores the best weights at the end of `fit` whether or not it stopped early, so the next
    phase always starts from the best epoch of this one.

    Args:
        monitor: The logged value watched (`val_loss`, `val_accuracy`, ...).
        patience: Epochs without improvement before the phase stops.
        min_delta: The least change that counts as an improvement.
        restore_best: Whether the phase ends on its best epoch's weights.
        first_epoch: The phase's first epoch on the global axis.
        min_epochs: Epochs the phase runs before it may stop (0 or 1: from its first epoch on).

    Returns:
        The callback.
    """
    return PhaseEarlyStopping(
        first_epoch=first_epoch,
        min_epochs=min_epochs,
        monitor=monitor,
        patience=patience,
        min_delta=min_delta,
        restore_best_weights=restore_best,
    )


class DivergenceGuard(keras.callbacks.Callback):
    """Raises `TrainingDivergedError` at the end of the first epoch that diverged (`pipeline.training.divergence`).

    It must come last in the callback list, so that the epoch that diverged is still recorded and
    logged to the run by the callbacks before it, where the user can see the loss blow up.

    Args:
        num_classes: Classes of the classifier.
        previous_loss: The training loss of the last epoch already trained (a resumed run's); None at the start.
    """

    def __init__(self, *, num_classes: int, previous_loss: float | None = None) -> None:
        super().__init__()
        self._num_classes = num_classes
        self._phase = ""
        # The run's previous epoch's training loss, across phases (one guard serves the whole run).
        self._previous_loss = previous_loss

    def begin_phase(self, phase: PhaseRecord) -> None:
        """Remembers the phase's name for the message."""
        self._phase = phase.name

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        check_epoch(
            logs, epoch=epoch, num_classes=self._num_classes, phase=self._phase, previous_loss=self._previous_loss
        )
        if "loss" in logs:
            self._previous_loss = float(logs["loss"])

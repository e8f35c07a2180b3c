"""Keras callbacks of the pipeline: one epoch history across all phases, early stopping per phase, and
the divergence guard that stops a blown-up run (its rule: `pipeline.divergence`).

Why: every phase is its own `fit` call, and Keras' `History` (like MLflow's Keras callback) restarts
with each one. The recorder keeps one continuous epoch axis, stamps each epoch with its phase and the
learning rate the optimiser really used, and puts both into `logs` so that callbacks after it (the
tracking logger) see them. The `lr` of an epoch is the one its last step used.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras

from pipeline.divergence import check_epoch
from pipeline.freezing import LayerState
from pipeline.schedules import learning_rate_used


@dataclass(frozen=True)
class PhaseRecord:
    """One phase of training and the global epochs it covered (first inclusive, end exclusive)."""

    index: int
    name: str
    trainable_blocks: int
    learning_rate: float
    first_epoch: int
    end_epoch: int
    cached_features: bool
    optimizer: str = ""
    schedule: str = "constant"
    bn_policy: str = "frozen"
    lr_decay_per_block: float = 1.0
    data_note: str = ""
    best_epoch: int | None = None
    seconds: float = 0.0

    def describe(self) -> str:
        """One line for humans and run tags: epochs (numbered from 1), how it trained, cache use, wall time."""
        best = f", restored best epoch {self.best_epoch + 1}" if self.best_epoch is not None else ""
        decay = f", lr / {self.lr_decay_per_block:g} per lower block" if self.lr_decay_per_block != 1 else ""
        return (
            f"{self.name}: epochs {self.first_epoch + 1}-{self.end_epoch}{best}, {self.optimizer} "
            f"lr {self.learning_rate:g} ({self.schedule}){decay}, BN {self.bn_policy}, "
            f"cached features {self.cached_features} ({self.data_note}), {self.seconds:.0f} s"
        )


HISTORY_COLUMNS = ("epoch", "phase", "phase_name", "loss", "accuracy", "val_loss", "val_accuracy", "lr")


@dataclass
class TrainingHistory:
    """Per-epoch metrics on one axis, and the phase boundaries."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    phases: list[PhaseRecord] = field(default_factory=list)
    layers: list[LayerState] = field(default_factory=list)

    @property
    def epochs_done(self) -> int:
        return len(self.rows)

    def save(self, *, csv_path: Path, json_path: Path) -> None:
        """Writes the epochs as CSV (a DVC plot) and epochs plus phases as JSON."""
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with csv_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, HISTORY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        document = {"epochs": self.rows, "phases": [asdict(phase) for phase in self.phases]}
        json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


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


def early_stopping(
    *, monitor: str, patience: int, min_delta: float, restore_best: bool
) -> keras.callbacks.EarlyStopping:
    """Keras' early stopping for one phase; with `restore_best` the phase ends on its best epoch's weights.

    Keras restores the best weights at the end of `fit` whether or not it stopped early, so the next
    phase always starts from the best epoch of this one.
    """
    return keras.callbacks.EarlyStopping(
        monitor=monitor, patience=patience, min_delta=min_delta, restore_best_weights=restore_best
    )


class DivergenceGuard(keras.callbacks.Callback):
    """Raises `TrainingDivergedError` at the end of the first epoch that diverged (`pipeline.divergence`).

    It must come last in the callback list, so that the epoch that diverged is still recorded and
    logged to the run by the callbacks before it, where the user can see the loss blow up.
    """

    def __init__(self, *, num_classes: int) -> None:
        super().__init__()
        self._num_classes = num_classes
        self._phase = ""

    def begin_phase(self, phase: PhaseRecord) -> None:
        """Remembers the phase's name for the message."""
        self._phase = phase.name

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        check_epoch(logs or {}, epoch=epoch, num_classes=self._num_classes, phase=self._phase)

"""One history for every phase of fine-tuning: its epochs on one axis, the phases' boundaries, the layer map.

Why: every phase is its own `fit`, and Keras' `History` (like MLflow's Keras callback) restarts with each
one. `TrainingHistory` keeps one continuous epoch axis (`pipeline.training.callbacks.HistoryRecorder`
fills it), the `PhaseRecord` of each phase, and which layers trained in each; it is saved as the CSV DVC
plots and a JSON that also holds the phases.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.model.freezing import LayerState
from pipeline.runtime import atomic


@dataclass(frozen=True)
class PhaseRecord:
    """One phase of training and the global epochs it covered (first inclusive, end exclusive).

    `xla`, `xla_reason`, `precision` and `replicas` are what the phase's compiled model ran with
    (`pipeline.runtime.compiled`); `xla` is None for a record written before they were kept.
    """

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
    xla: bool | None = None
    xla_reason: str = ""
    precision: str = ""
    replicas: int = 1

    def describe(self) -> str:
        """One line for humans and run tags: epochs (numbered from 1), how it trained, cache use, wall time."""
        best = f", restored best epoch {self.best_epoch + 1}" if self.best_epoch is not None else ""
        decay = f", lr / {self.lr_decay_per_block:g} per lower block" if self.lr_decay_per_block != 1 else ""
        return (
            f"{self.name}: epochs {self.first_epoch + 1}-{self.end_epoch}{best}, {self.optimizer} "
            f"lr {self.learning_rate:g} ({self.schedule}){decay}, BN {self.bn_policy}, "
            f"cached features {self.cached_features} ({self.data_note}){self._compiled()}, {self.seconds:.0f} s"
        )

    def _compiled(self) -> str:
        if self.xla is None:
            return ""
        replicas = f", {self.replicas} replicas" if self.replicas > 1 else ""
        return f", XLA {'on' if self.xla else 'off'} ({self.xla_reason}), {self.precision}{replicas}"


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
        with atomic.atomic_path(csv_path) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, HISTORY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        document = {"epochs": self.rows, "phases": [asdict(phase) for phase in self.phases]}
        atomic.write_text(json_path, json.dumps(document, indent=2) + "\n")

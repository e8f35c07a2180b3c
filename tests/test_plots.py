"""PNG figures: the history with its phase boundaries, and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np

from pipeline.callbacks import PhaseRecord, TrainingHistory
from pipeline.plots import plot_confusion_matrix, plot_history


def _history() -> TrainingHistory:
    rows = [
        {
            "epoch": epoch,
            "loss": 1.0 / (epoch + 1),
            "val_loss": 1.2 / (epoch + 1),
            "accuracy": 0.5 + epoch / 20,
            "val_accuracy": 0.45 + epoch / 20,
        }
        for epoch in range(5)
    ]
    phases = [
        PhaseRecord(0, "frozen", 0, 1e-3, 0, 3, True),
        PhaseRecord(1, "unfreeze_top_2", 2, 1e-4, 3, 5, True),
    ]
    return TrainingHistory(rows=rows, phases=phases)


def test_history_plot_is_a_png_with_two_panels(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "history.png"
    plot_history(_history(), path)
    image = matplotlib.image.imread(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.shape[0] == 495 and image.shape[1] == 1320


def test_confusion_plot_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "confusion.png"
    plot_confusion_matrix(np.array([[5, 1], [0, 4]]), ("cat", "dog"), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""PNG figures: the history with its phase boundaries, and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np

from pipeline.evaluation.plots import plot_confusion_matrix, plot_history
from pipeline.training.history import PhaseRecord, TrainingHistory


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


def test_lr_finder_plot_marks_both_suggestions(tmp_path: Path) -> None:
    from pipeline.evaluation.plots import plot_lr_finder
    from pipeline.optim.lr_finder import LRFinderResult

    rates = tuple(float(rate) for rate in np.logspace(-5, 0, 20))
    losses = tuple(float(2.0 - index * 0.05) for index in range(20))
    result = LRFinderResult(rates, losses, losses, valley=rates[12], steepest=rates[5])
    figure = plot_lr_finder(result, tmp_path / "sub" / "lr.png")
    assert (tmp_path / "sub" / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axis = figure.axes[0]
    assert axis.get_xscale() == "log"
    labels = [line.get_label() for line in axis.get_lines()]
    assert labels == ["loss per step", "smoothed loss", "valley: 0.014", "steepest: 0.00021"]
    marked = [(line.get_xdata()[0], line.get_ydata()[0]) for line in axis.get_lines()[2:]]
    assert marked == [(rates[12], losses[12]), (rates[5], losses[5])]
    assert [text.get_text() for text in axis.texts] == ["0.014", "0.00021"]


def test_note_plot_writes_a_png(tmp_path: Path) -> None:
    from pipeline.evaluation.plots import plot_note

    plot_note("nothing to draw", tmp_path / "sub" / "note.png")
    assert (tmp_path / "sub" / "note.png").read_bytes()[:4] == b"\x89PNG"


def test_reliability_diagram_shows_each_bins_accuracy_count_and_the_ece(tmp_path: Path) -> None:
    from pipeline.evaluation.calibration import reliability_bins
    from pipeline.evaluation.plots import plot_reliability

    # Two answers at 0.95 (one right), three at 0.55 (all right).
    labels = np.array([0, 1, 0, 0, 0])
    probabilities = np.array([[0.95, 0.05]] * 2 + [[0.55, 0.45]] * 3)
    bins = reliability_bins(labels, probabilities)
    path = tmp_path / "reports" / "calibration.png"
    figure = plot_reliability(bins, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axis = figure.axes[0]
    bars = axis.patches
    assert [round(bar.get_x() * 15) for bar in bars] == [8, 14]
    assert [bar.get_height() for bar in bars] == [1.0, 0.5]
    assert [text.get_text() for text in axis.texts] == ["3", "2"]
    diagonal = axis.get_lines()[0]
    assert (list(diagonal.get_xdata()), list(diagonal.get_ydata())) == ([0, 1], [0, 1])
    # 2/5 * |0.5 - 0.95| + 3/5 * |1 - 0.55| = 0.45
    assert axis.get_title() == "Reliability: ECE 0.4500 (15 bins, 5 images)"

"""PNG figures with matplotlib: the training history, the confusion matrix, the reliability diagram and the LR
range test.

Why: `dvc plots show` renders HTML that fetches vega from a CDN and is blank offline; PNGs work in
the MLflow UI, in a file browser and in a report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

from pipeline.runtime import atomic

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:
    from pipeline.evaluation.calibration import ReliabilityBins
    from pipeline.optim.lr_finder import LRFinderResult
    from pipeline.training.history import TrainingHistory


def plot_history(history: TrainingHistory, path: Path, *, marker: tuple[int, str] | None = None) -> None:
    """Loss and accuracy, train vs validation, with the phase boundaries marked.

    Why: this is the curve a course teaches to read: a validation loss that turns up while the
    training loss keeps falling is overfitting; both flat and high is underfitting. Epochs are
    numbered from 1 on one axis across phases, and each phase is shaded and labelled.

    Args:
        history: The recorded epochs and phases.
        path: Where to write the PNG.
        marker: The epoch (numbered from 1) and the word the diagnosis of the curves points at
            (`pipeline.training.diagnosis`), drawn as a red dotted line on both plots; None for none.
    """
    epochs = np.array([row["epoch"] + 1 for row in history.rows])
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for axis, metric, title in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        for key, label, style in ((metric, "train", "-o"), (f"val_{metric}", "validation", "-s")):
            values = [row.get(key, np.nan) for row in history.rows]
            axis.plot(epochs, values, style, markersize=3, label=label)
        for phase in history.phases:
            if phase.index % 2:
                axis.axvspan(phase.first_epoch + 0.5, phase.end_epoch + 0.5, color="0.92", zorder=0)
            if phase.index:
                axis.axvline(phase.first_epoch + 0.5, color="0.4", linestyle="--", linewidth=1)
            axis.annotate(
                phase.name,
                xy=(phase.first_epoch + 0.6, 1.0),
                xycoords=("data", "axes fraction"),
                va="top",
                fontsize=8,
                color="0.3",
            )
        if marker is not None:
            axis.axvline(marker[0], color="tab:red", linestyle=":", linewidth=1.5)
            axis.annotate(
                marker[1],
                xy=(marker[0], 0.02),
                xycoords=("data", "axes fraction"),
                ha="center",
                fontsize=8,
                color="tab:red",
                backgroundcolor="white",
            )
        axis.set_title(title)
        axis.set_xlabel("epoch (all phases)")
        axis.grid(alpha=0.3)
        axis.legend(loc="center right")
    _save_figure(figure, path, dpi=110)
    plt.close(figure)


def plot_confusion_matrix(confusion: np.ndarray, class_names: tuple[str, ...], path: Path) -> None:
    """The confusion matrix, rows true and columns predicted, with counts in the cells.

    Args:
        confusion: Square matrix of counts.
        class_names: Label index -> name.
        path: Where to write the PNG.
    """
    figure, axis = plt.subplots(figsize=(8, 7), constrained_layout=True)
    image = axis.imshow(confusion, cmap="Blues")
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    threshold = confusion.max() / 2 if confusion.size else 0
    for row in range(confusion.shape[0]):
        for column in range(confusion.shape[1]):
            axis.text(
                column,
                row,
                str(confusion[row, column]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if confusion[row, column] > threshold else "black",
            )
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    figure.colorbar(image, ax=axis, shrink=0.8)
    _save_figure(figure, path, dpi=110)
    plt.close(figure)


def plot_reliability(bins: ReliabilityBins, path: Path) -> plt.Figure:
    """The reliability diagram: the accuracy of each confidence bin against the diagonal of a calibrated model.

    Why: the expected calibration error is one number; the diagram shows where it comes from. Bars below
    the diagonal are bins where the model is overconfident (right less often than it says), bars above it
    underconfident; each bar's image count is written on it, so a bin of three images is not over-read.

    Args:
        bins: The reliability bins and the ECE (`pipeline.evaluation.calibration.reliability_bins`).
        path: Where to write the PNG.

    Returns:
        The figure (closed, for inspection): one bar per non-empty bin (its accuracy), line 0 the diagonal and
        line 1 the bins' mean confidences, the axis' texts the counts and its title the ECE.
    """
    figure, axis = plt.subplots(figsize=(6, 6), constrained_layout=True)
    filled = bins.counts > 0
    lefts, widths = bins.edges[:-1][filled], np.diff(bins.edges)[filled]
    axis.bar(lefts, bins.accuracy[filled], width=widths, align="edge", color="C0", edgecolor="white", label="accuracy")
    axis.plot([0, 1], [0, 1], "--", color="0.4", linewidth=1, label="calibrated")
    centres = lefts + widths / 2
    axis.plot(centres, bins.confidence[filled], "o", color="C3", markersize=4, label="mean confidence")
    for centre, accuracy, count in zip(centres, bins.accuracy[filled], bins.counts[filled], strict=True):
        axis.text(centre, accuracy + 0.01, str(count), ha="center", va="bottom", fontsize=7, color="0.2")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.08)  # room for the count above a bar at 1
    axis.set_xlabel("top-class confidence")
    axis.set_ylabel("accuracy")
    images, count = int(bins.counts.sum()), len(bins.counts)
    axis.set_title(f"Reliability: ECE {bins.ece:.4f} ({count} bins, {images} images)")
    axis.grid(alpha=0.3)
    # Below the axes: an underconfident model's bars fill the upper left, an overconfident one's the right.
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    _save_figure(figure, path, dpi=110)
    plt.close(figure)
    return figure


def plot_lr_finder(result: LRFinderResult, path: Path) -> plt.Figure:
    """Loss against learning rate (log axis) of the LR range test, with both suggestions marked.

    Why: the curve, not only the number, tells whether the suggestion is sound: the loss should fall
    steadily at the suggested LR and blow up only well to its right.

    Args:
        result: The sweep.
        path: Where to write the PNG.

    Returns:
        The figure (closed, for inspection): lines 0 and 1 are the raw and smoothed losses, lines 2 and 3
        the valley and steepest markers, and the axis' texts their values.
    """
    figure, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    axis.plot(result.learning_rates, result.losses, color="0.75", linewidth=0.8, label="loss per step")
    axis.plot(result.learning_rates, result.smoothed_losses, color="C0", label="smoothed loss")
    log_rates = np.log(result.learning_rates)
    for rule, marker, color in (("valley", "o", "C2"), ("steepest", "v", "C3")):
        learning_rate = result.suggestion(rule)
        # On the smoothed curve; exact at a recorded LR, interpolated (log axis) for any other.
        loss = float(np.interp(np.log(learning_rate), log_rates, result.smoothed_losses))
        axis.plot([learning_rate], [loss], marker, color=color, markersize=9, label=f"{rule}: {learning_rate:.2g}")
        axis.annotate(
            f"{learning_rate:.2g}",
            xy=(learning_rate, loss),
            xytext=(6, -14 if rule == "valley" else 8),
            textcoords="offset points",
            fontsize=8,
            color=color,
        )
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    finite = [value for value in (*result.losses, *result.smoothed_losses) if np.isfinite(value)]
    if finite:
        # The divergence at the end would squash the part of the curve that matters.
        top = min(max(finite), 2.5 * result.smoothed_losses[0])
        axis.set_ylim(min(finite) * 0.95, top * 1.05)
    axis.set_title("LR range test")
    axis.legend()
    _save_figure(figure, path, dpi=110)
    plt.close(figure)
    return figure


def plot_note(text: str, path: Path) -> None:
    """A PNG holding one line of text, where a stage has nothing to draw but must write its plot."""
    figure, axis = plt.subplots(figsize=(7, 1.2))
    axis.axis("off")
    axis.text(0.5, 0.5, text, ha="center", va="center")
    _save_figure(figure, path, dpi=100)
    plt.close(figure)


def _save_figure(figure: plt.Figure, path: Path, *, dpi: int) -> None:
    """Saves a figure as PNG atomically (`pipeline.runtime.atomic`): a killed run leaves the previous plot."""
    with atomic.atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=dpi, format="png")

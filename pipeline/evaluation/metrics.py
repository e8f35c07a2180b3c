"""Test-set scoring with scikit-learn's metrics, of the new model, the majority-class baseline and the champion.

Why: the registry's champion gate and the user's comparisons need one trusted set of numbers:
accuracy, macro F1 (classes weigh the same however many images they have), per-class scores and
the confusion matrix; and the gate needs them for the current champion on the same test images. A deployer
also asks how well the probabilities rank (macro one-vs-rest ROC-AUC) and whether they can be trusted as
probabilities (the expected calibration error, `pipeline.evaluation.calibration`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
    roc_auc_score,
)

from pipeline.data.datasets import image_dataset
from pipeline.evaluation.calibration import ReliabilityBins, reliability_bins
from pipeline.evaluation.comparison import BaselineScores, ChampionScores, PairedTest
from pipeline.evaluation.significance import bootstrap_intervals, mcnemar_exact
from pipeline.runtime import atomic


@dataclass(frozen=True)
class EvaluationResult:
    """Scores of one model on one split.

    `roc_auc` is the macro one-vs-rest ROC-AUC over the classes present in the labels (`roc_auc_classes` of
    them; NaN when fewer than two are present: `macro_roc_auc`); `calibration` the reliability bins and the
    expected calibration error of the top-class confidence.
    """

    accuracy: float
    macro_f1: float
    loss: float
    examples: int
    per_class: dict[str, dict[str, float]]
    confusion: np.ndarray
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    predictions: np.ndarray | None = None
    roc_auc: float = math.nan
    roc_auc_classes: int = 0
    calibration: ReliabilityBins | None = None

    def right(self, labels: np.ndarray) -> np.ndarray:
        """Which images it got right (N,), for McNemar's test against another model on the same images.

        Raises:
            ValueError: It kept no predictions.
        """
        if self.predictions is None:
            raise ValueError("these scores were computed without keeping the predictions")
        return self.predictions == np.asarray(labels)

    def summary(self) -> dict[str, float | int]:
        """The headline numbers, as written to metrics.json: accuracy, macro F1, loss, examples, `roc_auc` and
        `ece` (when computed), with the bootstrap intervals when computed (`accuracy_ci_low`, `accuracy_ci_high`,
        `macro_f1_ci_low`, `macro_f1_ci_high`)."""
        headline: dict[str, float | int] = {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "loss": self.loss,
            "examples": self.examples,
        }
        if self.roc_auc_classes:
            headline["roc_auc"] = self.roc_auc
        if self.calibration is not None:
            headline["ece"] = self.calibration.ece
        for name, (low, high) in self.intervals.items():
            headline.update({f"{name}_ci_low": low, f"{name}_ci_high": high})
        return headline

    def write(
        self, *, metrics: Path, report: Path, class_names: Sequence[str], extra: dict[str, float] | None = None
    ) -> None:
        """Writes the evaluate stage's two files: the headline numbers (`{"test": summary}`, DVC's metrics,
        followed by the `extra` metrics, such as the baselines' `probe_test_accuracy`) and the per-class scores
        with the confusion matrix, the class names and the reliability bins (`calibration`, when computed)."""
        headline = {"test": self.summary(), **(extra or {})}
        atomic.write_text(metrics, json.dumps(headline, indent=2) + "\n")
        document = {"per_class": self.per_class, "confusion": self.confusion.tolist(), "class_names": list(class_names)}
        if self.calibration is not None:
            document["calibration"] = self.calibration.as_dict()
        atomic.write_text(report, json.dumps(document, indent=2) + "\n")


def score_predictions(
    labels: np.ndarray, probabilities: np.ndarray, *, class_names: tuple[str, ...], intervals: bool = False
) -> EvaluationResult:
    """Scores class probabilities against true labels.

    Args:
        labels: True labels (N,).
        probabilities: Predicted probabilities (N, classes).
        class_names: Label index -> name.
        intervals: Also the 95% bootstrap intervals of accuracy and macro F1 (`pipeline.evaluation.significance`:
            1,000 resamples of the test images, a fixed seed); the model's, not the baselines'.

    Returns:
        The scores, with the macro one-vs-rest ROC-AUC (`macro_roc_auc`) and the reliability bins of 15 equal-width
        confidence bins (`pipeline.evaluation.calibration`).
    """
    class_indices = list(range(len(class_names)))
    predictions = probabilities.argmax(axis=1)
    report: dict[str, Any] = classification_report(
        labels,
        predictions,
        labels=class_indices,
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
    per_class = {
        name: {metric: float(report[name][metric]) for metric in ("precision", "recall", "f1-score", "support")}
        for name in class_names
    }
    # A float32 softmax sums to 1 only within float32 rounding, which scikit-learn warns about: renormalise
    # in float64 (the scores do not change beyond that rounding).
    probabilities = probabilities.astype(np.float64)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return EvaluationResult(
        accuracy=float(accuracy_score(labels, predictions)),
        macro_f1=float(f1_score(labels, predictions, labels=class_indices, average="macro", zero_division=0)),
        loss=float(log_loss(labels, probabilities, labels=class_indices)),
        examples=len(labels),
        per_class=per_class,
        confusion=confusion_matrix(labels, predictions, labels=class_indices),
        intervals=bootstrap_intervals(labels, predictions, classes=len(class_names)) if intervals else {},
        predictions=predictions,
        roc_auc=macro_roc_auc(labels, probabilities, classes=len(class_names)),
        roc_auc_classes=len(np.unique(labels)),
        calibration=reliability_bins(labels, probabilities),
    )


def macro_roc_auc(labels: np.ndarray, probabilities: np.ndarray, *, classes: int) -> float:
    """The macro one-vs-rest ROC-AUC (scikit-learn's `roc_auc_score`): how well each class's probability ranks
    its images above the others', averaged over the classes with the same weight.

    Why over the classes present only: a class without test images has no positives, so its ROC curve is
    undefined and scikit-learn's macro average turns NaN; the average over the classes that have test images is
    the honest figure (`EvaluationResult.roc_auc_classes` says how many). Two classes: the second class's
    probability against the labels (the first's would give the same area).

    Args:
        labels: True labels (N,).
        probabilities: Predicted probabilities (N, classes), rows summing to 1.
        classes: How many classes the model answers.

    Returns:
        The area, in [0, 1]; NaN when fewer than two classes are present (no negatives for the one there).
    """
    labels = np.asarray(labels)
    present = np.unique(labels)
    if len(present) < 2:
        return math.nan
    if classes == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    if len(present) == classes:
        return float(
            roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=list(range(classes)))
        )
    # One-vs-rest is one binary ROC-AUC per class on its indicator column: the same, on the present ones only.
    indicators = labels[:, np.newaxis] == present[np.newaxis, :]
    return float(roc_auc_score(indicators, probabilities[:, present], average="macro"))


def paired_test(challenger_right: np.ndarray, other_right: np.ndarray) -> PairedTest:
    """McNemar's exact test of the challenger against another model, as the champion gate reads it.

    Args:
        challenger_right: Which test images the challenger gets right (N,).
        other_right: Which of the same images, in the same order, the other model gets right (N,).

    Returns:
        The discordant counts and the two-sided p-value.
    """
    result = mcnemar_exact(challenger_right, other_right)
    return PairedTest(challenger_only=result.only_first, other_only=result.only_second, p_value=result.p_value)


@dataclass(frozen=True)
class MajorityBaseline:
    """Scores of always answering the split's most frequent class: the least a useful model must beat."""

    class_name: str
    accuracy: float
    macro_f1: float
    label: int = 0

    def right(self, labels: np.ndarray) -> np.ndarray:
        """Which images the constant answer gets right: those of the majority class."""
        return np.asarray(labels) == self.label

    def summary(self) -> dict[str, float]:
        """The scores by metric name, as the champion gate reads them."""
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1}

    def scores(self) -> BaselineScores:
        """The scores and the class, as the champion gate's comparison stores them."""
        return BaselineScores(
            scores=self.summary(),
            description=f"always {self.class_name}, the test split's most frequent class",
            details={"class_name": self.class_name},
        )


def majority_baseline(labels: np.ndarray, *, class_names: tuple[str, ...]) -> MajorityBaseline:
    """Scores the constant answer "the most frequent class of these labels" on these labels.

    Why the split's own majority and not the training set's: no constant answer scores more on this
    split, so beating it shows the model learned something from the images. Its accuracy is that
    class's share of the split; ties go to the lower label (the scores are the same for each).

    Args:
        labels: True labels (N,) of the split.
        class_names: Label index -> name.

    Returns:
        The majority class and its accuracy and macro F1.
    """
    class_indices = list(range(len(class_names)))
    majority = int(np.bincount(labels, minlength=len(class_names)).argmax())
    predictions = np.full_like(labels, majority)
    return MajorityBaseline(
        class_name=class_names[majority],
        accuracy=float(accuracy_score(labels, predictions)),
        macro_f1=float(f1_score(labels, predictions, labels=class_indices, average="macro", zero_division=0)),
        label=majority,
    )


def evaluate_classifier(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: tuple[str, ...],
    image_size: int,
    batch_size: int,
    intervals: bool = False,
) -> EvaluationResult:
    """Scores an end-to-end model (one that takes 0..255 RGB) on uint8 images.

    Args:
        model: The exported classifier, preprocessing included.
        images: uint8 images.
        labels: True labels.
        class_names: Label index -> name.
        image_size: The model's square input size.
        batch_size: Images per batch.
        intervals: Also the bootstrap intervals of accuracy and macro F1 (see `score_predictions`).

    Returns:
        The scores.
    """
    dataset = image_dataset(images, labels, image_size=image_size, batch_size=batch_size)
    probabilities = model.predict(dataset, verbose=0)
    return score_predictions(labels, probabilities, class_names=class_names, intervals=intervals)


def _names(names: tuple[str, ...] | list[str]) -> str:
    shown = ", ".join(names[:4])
    return f"{len(names)} classes: {shown}{', ...' if len(names) > 4 else ''}"


def score_champion(
    version: str,
    load: Callable[[], tuple[keras.Model, tuple[str, ...] | None]],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: tuple[str, ...],
    batch_size: int,
    challenger_right: np.ndarray | None = None,
) -> ChampionScores:
    """Scores the registry's champion on the challenger's test images, or says why it cannot be compared.

    Why here: the gate must compare like with like, so the champion is scored on the very images
    and labels the challenger was, not judged by a number its own run measured on another split.
    It is comparable when it answers the same question: the same class names in the same order, and
    square RGB images in (at its own size: both models see the same stored test images, each resized
    to the size it was trained at, as each would be used).

    Args:
        version: The champion's version.
        load: Loads the champion and the class names it was registered with (None if it has none).
        images: The challenger's uint8 test images.
        labels: Their labels.
        class_names: The challenger's classes.
        batch_size: Images per batch.
        challenger_right: Which of these images the challenger gets right: with it, the scores carry
            McNemar's test of the challenger against the champion (`paired_test`).

    Returns:
        Its scores, or no scores and the reason.
    """
    try:
        model, champion_classes = load()
    # Whatever stops the champion from loading (artifacts deleted, a layer this Keras cannot rebuild, an
    # unreachable tracking server) stops the comparison; the gate then keeps the champion, which is safe.
    except Exception as error:
        detail = str(error).strip().splitlines()
        return ChampionScores(
            version, None, f"it could not be loaded: {type(error).__name__}: {detail[0] if detail else ''}"
        )
    if champion_classes is None:
        return ChampionScores(
            version,
            None,
            "it was registered without class names (by an earlier pipeline), so its classes cannot be matched",
        )
    if tuple(champion_classes) != tuple(class_names):
        return ChampionScores(
            version, None, f"its classes ({_names(champion_classes)}) are not this run's ({_names(class_names)})"
        )
    shape = tuple(model.input_shape) if isinstance(model.input_shape, tuple) else None
    if shape is None or len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[1] != shape[2]:
        return ChampionScores(version, None, f"it takes inputs of shape {model.input_shape}, not square RGB images")
    result = evaluate_classifier(
        model, images, labels, class_names=class_names, image_size=int(shape[1]), batch_size=batch_size
    )
    paired = None if challenger_right is None else paired_test(challenger_right, result.right(labels))
    return ChampionScores(version, result.summary(), paired=paired)

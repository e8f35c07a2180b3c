"""Test-set scoring with scikit-learn's metrics.

Why: the registry's champion gate and the user's comparisons need one trusted set of numbers:
accuracy, macro F1 (classes weigh the same however many images they have), per-class scores and
the confusion matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score, log_loss

from pipeline.data.datasets import image_dataset


@dataclass(frozen=True)
class EvaluationResult:
    """Scores of one model on one split."""

    accuracy: float
    macro_f1: float
    loss: float
    examples: int
    per_class: dict[str, dict[str, float]]
    confusion: np.ndarray

    def summary(self) -> dict[str, float | int]:
        """The headline numbers, as written to metrics.json."""
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "loss": self.loss,
            "examples": self.examples,
        }


def score_predictions(
    labels: np.ndarray, probabilities: np.ndarray, *, class_names: tuple[str, ...]
) -> EvaluationResult:
    """Scores class probabilities against true labels.

    Args:
        labels: True labels (N,).
        probabilities: Predicted probabilities (N, classes).
        class_names: Label index -> name.

    Returns:
        The scores.
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
    )


def evaluate_classifier(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: tuple[str, ...],
    image_size: int,
    batch_size: int,
) -> EvaluationResult:
    """Scores an end-to-end model (one that takes 0..255 RGB) on uint8 images.

    Args:
        model: The exported classifier, preprocessing included.
        images: uint8 images.
        labels: True labels.
        class_names: Label index -> name.
        image_size: The model's square input size.
        batch_size: Images per batch.

    Returns:
        The scores.
    """
    dataset = image_dataset(images, labels, image_size=image_size, batch_size=batch_size)
    probabilities = model.predict(dataset, verbose=0)
    return score_predictions(labels, probabilities, class_names=class_names)

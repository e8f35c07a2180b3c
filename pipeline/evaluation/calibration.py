"""How far a classifier's confidence can be trusted: the expected calibration error and its reliability bins.

Why: a deployer who thresholds on the top probability ("answer when above 0.9, else ask a person") needs
the probability to mean what it says: of the images answered with confidence 0.9, about 90% right. Accuracy
and ROC-AUC do not tell; the reliability bins do, and the expected calibration error (ECE, Guo et al. 2017,
"On Calibration of Modern Neural Networks") sums them into one number: 0 for a calibrated model.

Why numpy and not scikit-learn: `sklearn.calibration.calibration_curve` is binary (one class's probability
against its 0/1 outcome) and scikit-learn has no multiclass ECE; the top-class form below is a few lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The contract, and the count of Guo et al.: 15 equal-width bins of the top-class confidence.
CALIBRATION_BINS = 15


@dataclass(frozen=True)
class ReliabilityBins:
    """The top-class confidence of a model's answers, in equal-width bins, against how often it was right.

    Attributes:
        edges: The bins' edges (bins + 1,), 0 to 1; bin i holds confidences in (edges[i], edges[i + 1]]
            (a confidence of exactly 0, which a softmax never gives, falls in the first).
        counts: Images per bin (bins,).
        accuracy: The share of the bin's images whose top class is right (bins,); NaN for an empty bin.
        confidence: The bin's mean top-class confidence (bins,); NaN for an empty bin.
        ece: The expected calibration error: sum over bins of count / N * |accuracy - confidence|.
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    ece: float

    def as_dict(self) -> dict[str, object]:
        """The bins as JSON-ready lists, an empty bin's accuracy and confidence as None (JSON has no NaN)."""

        def listed(values: np.ndarray) -> list[float | None]:
            return [None if np.isnan(value) else float(value) for value in values]

        return {
            "ece": self.ece,
            "edges": [float(edge) for edge in self.edges],
            "counts": [int(count) for count in self.counts],
            "accuracy": listed(self.accuracy),
            "confidence": listed(self.confidence),
        }


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, *, bins: int = CALIBRATION_BINS) -> ReliabilityBins:
    """Bins the top-class confidence of each answer and computes the expected calibration error.

    Args:
        labels: True labels (N,).
        probabilities: Predicted class probabilities (N, classes); the answer is the most probable class.
        bins: How many equal-width bins over [0, 1].

    Returns:
        The per-bin counts, accuracy and mean confidence, and the ECE.

    Raises:
        ValueError: No images, or `bins` below 1.
    """
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    if len(labels) == 0:
        raise ValueError("the calibration error needs at least one image")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    confidence = probabilities.max(axis=1)
    right = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins, (edges[i], edges[i + 1]]: a confidence of 1 lands in the last bin, and one on an
    # inner edge in the bin below it, as Guo et al. count them.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    filled = counts > 0
    accuracy = np.full(bins, np.nan)
    mean_confidence = np.full(bins, np.nan)
    accuracy[filled] = np.bincount(index, weights=right, minlength=bins)[filled] / counts[filled]
    mean_confidence[filled] = np.bincount(index, weights=confidence, minlength=bins)[filled] / counts[filled]
    gaps = np.abs(accuracy[filled] - mean_confidence[filled])
    ece = float(np.sum(counts[filled] / len(labels) * gaps))
    return ReliabilityBins(edges=edges, counts=counts, accuracy=accuracy, confidence=mean_confidence, ece=ece)

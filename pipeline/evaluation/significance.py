"""Whether a difference in test scores is real: bootstrap intervals of a model's scores, and McNemar's exact test
of two models scored on the same images.

Why: a test accuracy is an estimate from a few thousand images. A 0.3-point gain between two runs, or a
challenger that beats the champion by one image, is often within the noise of the test set itself. The
bootstrap interval says how wide that noise is for one model; McNemar's test asks, from the images on which
exactly one of two models is right, whether the better one is better beyond chance. Both use SciPy
(`scipy.stats.bootstrap`, `scipy.stats.binomtest`); only the statistics are ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

# The contract for every run's intervals: 1,000 resamples of the test set, a fixed seed, 95%.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def _accuracy(labels: np.ndarray, predictions: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(labels == predictions, axis=axis)


def _macro_f1(labels: np.ndarray, predictions: np.ndarray, axis: int = -1, *, classes: int) -> np.ndarray:
    """Macro F1 of every resample at once (each row of the last axis one resample), as scikit-learn computes it
    with `zero_division=0`: per class 2 TP / (2 TP + FP + FN), averaged over all `classes`."""
    labels, predictions = np.moveaxis(labels, axis, -1), np.moveaxis(predictions, axis, -1)
    batch = labels.shape[:-1]
    labels, predictions = labels.reshape(-1, labels.shape[-1]), predictions.reshape(-1, predictions.shape[-1])
    rows = np.arange(len(labels))[:, None]
    # One confusion matrix per resample, from one bincount over (resample, true class, predicted class).
    cells = (rows * classes + labels) * classes + predictions
    confusion = np.bincount(cells.ravel(), minlength=len(labels) * classes * classes).reshape(-1, classes, classes)
    true_positive = np.diagonal(confusion, axis1=1, axis2=2).astype(np.float64)
    denominator = confusion.sum(axis=1) + confusion.sum(axis=2)  # (2 TP + FP + FN) per class
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return f1.mean(axis=1).reshape(batch)


def bootstrap_intervals(
    labels: np.ndarray,
    predictions: np.ndarray,
    *,
    classes: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of accuracy and macro F1 over resamples of the test images.

    Args:
        labels: True labels (N,).
        predictions: Predicted labels (N,).
        classes: Number of classes (macro F1 averages over all of them).
        resamples: Bootstrap resamples.
        seed: Seed of the resampling: the same predictions always give the same interval.
        confidence: Coverage of the interval.

    Returns:
        {"accuracy": (low, high), "macro_f1": (low, high)}.
    """
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    intervals = {}
    for name, statistic in (
        ("accuracy", _accuracy),
        ("macro_f1", lambda y, p, axis=-1: _macro_f1(y, p, axis, classes=classes)),
    ):
        result = stats.bootstrap(
            (labels, predictions),
            statistic,
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            confidence_level=confidence,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        intervals[name] = (float(result.confidence_interval.low), float(result.confidence_interval.high))
    return intervals


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test of two models on the same images.

    Attributes:
        only_first: Images the first model gets right and the second wrong.
        only_second: Images the second gets right and the first wrong.
        p_value: Two-sided exact p-value: the chance of a split at least this uneven if both were as good.
    """

    only_first: int
    only_second: int
    p_value: float


def mcnemar_exact(first_right: np.ndarray, second_right: np.ndarray) -> McNemarResult:
    """McNemar's exact test: a two-sided binomial test of the discordant images at one half.

    Args:
        first_right: Whether the first model is right on each image (N,).
        second_right: Whether the second is, on the same images in the same order (N,).

    Returns:
        The discordant counts and the p-value (1.0 when no image is discordant).

    Raises:
        ValueError: The two do not cover the same number of images.
    """
    first_right, second_right = np.asarray(first_right, dtype=bool), np.asarray(second_right, dtype=bool)
    if first_right.shape != second_right.shape:
        raise ValueError(
            f"McNemar's test needs both models on the same images. Received: {first_right.shape} and "
            f"{second_right.shape}"
        )
    only_first = int(np.sum(first_right & ~second_right))
    only_second = int(np.sum(~first_right & second_right))
    discordant = only_first + only_second
    p_value = 1.0 if discordant == 0 else float(stats.binomtest(only_first, discordant, 0.5).pvalue)
    return McNemarResult(only_first=only_first, only_second=only_second, p_value=p_value)


def pack_right(right: np.ndarray) -> str:
    """Which images a model gets right, as the hex of `numpy.packbits`: 7,000 images in 1,750 characters.

    Why: the champion gate's comparison file must let the register stage test a champion promoted
    meanwhile against the challenger, on the same images, without scoring the challenger again; a list of
    7,000 booleans in JSON would be 7,000 lines.
    """
    return np.packbits(np.asarray(right, dtype=bool)).tobytes().hex()


def unpack_right(packed: str, count: int) -> np.ndarray:
    """The inverse of `pack_right`: `count` booleans.

    Raises:
        ValueError: `packed` is not hex, or holds fewer than `count` bits.
    """
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(packed), dtype=np.uint8))
    if len(bits) < count:
        raise ValueError(f"the packed answers hold {len(bits)} bits, fewer than the {count} images")
    return bits[:count].astype(bool)

"""Classical baselines scored on the model's own test split: a linear probe and a pixel classifier.

Why: beating the majority class shows that a model learned something, not that fine-tuning was worth it.
On a small dataset a logistic regression on raw pixels, or on the pretrained backbone's frozen features,
can beat a fine-tuned network whose recipe did not fit the data; the user should see that, with numbers,
and the champion gate should not promote such a model (`pipeline.evaluation.gate`).

- The **linear probe** fits scikit-learn's logistic regression (lbfgs, features standardised) on the
  frozen *pretrained* backbone's pooled features (`pipeline.model.head.pool_features`, where the head
  reads them): what transfer learning gives with no fine-tuning at all.
- The **pixel baseline** fits the same classifier on the images resized (area average) to a small
  square, grey or per channel, scaled to [0, 1].

Each fits on a stratified, seeded subsample of the training split capped by its settings, is scored by
`score_predictions` on the whole test split, and says what it used (training images, input dimension,
solver, seconds). The caps keep the cost a small share of the train stage: bench/baselines_cost.py
measures it.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pipeline.data.datasets import image_dataset
from pipeline.evaluation.comparison import BaselineScores
from pipeline.evaluation.metrics import EvaluationResult, score_predictions

if TYPE_CHECKING:
    import keras

    from pipeline.backbones.base import Backbone
    from pipeline.params.baselines import PixelsParams, ProbeParams

SOLVER = "lbfgs"
# Images resized per chunk: bounds the float copy (1,024 stored 96 px RGB images are 113 MB in float32).
_RESIZE_CHUNK = 1024


@dataclass(frozen=True)
class BaselineResult:
    """One baseline's scores on the test split, and what it used.

    Attributes:
        name: `probe` or `pixels` (the names of `pipeline.params.baselines.BASELINE_NAMES`).
        title: What it is, in two words ("linear probe").
        description: What it fitted on, in words, with the numbers.
        result: Its scores on the test split.
        train_images: Training images it fitted on.
        dimension: Length of its input vectors (features or pixels).
        solver: scikit-learn's solver.
        iterations: Solver iterations it took.
        converged: Whether the solver converged within its iteration cap.
        seconds: Wall time, features or pixels included.
        fit_seconds: Of which fitting and predicting with the logistic regression.
    """

    name: str
    title: str
    description: str
    result: EvaluationResult
    train_images: int
    dimension: int
    solver: str
    iterations: int
    converged: bool
    seconds: float
    fit_seconds: float

    def scores(self) -> BaselineScores:
        """The scores and what it used, as the champion gate's comparison stores them."""
        details: dict[str, Any] = {
            "title": self.title,
            "train_images": self.train_images,
            "dimension": self.dimension,
            "solver": self.solver,
            "iterations": self.iterations,
            "converged": self.converged,
            "seconds": round(self.seconds, 3),
            "fit_seconds": round(self.fit_seconds, 3),
        }
        return BaselineScores(scores=self.result.summary(), description=self.description, details=details)

    def line(self) -> str:
        """One printed line: what it is and used, its scores and its cost."""
        note = "" if self.converged else f", lbfgs stopped at max_iter {self.iterations} before converging"
        return (
            f"{self.title} ({self.description}): accuracy {self.result.accuracy:.4f}, macro F1 "
            f"{self.result.macro_f1:.4f}, {self.seconds:.1f} s ({self.fit_seconds:.1f} s fitting){note}"
        )


def stratified_subsample(labels: np.ndarray, max_images: int, *, seed: int) -> np.ndarray:
    """Positions of at most `max_images` labels, drawn with the classes' proportions kept.

    Why scikit-learn's split: it keeps every class's share to within one image, so a cap never drops a
    class. When stratifying is impossible (a class with a single image, or fewer images allowed than
    classes) the draw is a plain seeded one.

    Args:
        labels: Labels (N,) of the training split.
        max_images: The cap (at least 1).
        seed: Seed of the draw.

    Returns:
        Sorted positions: all of them when N <= max_images, else exactly `max_images`.

    Raises:
        ValueError: `max_images` is below 1.
    """
    if max_images < 1:
        raise ValueError(f"Argument `max_images` must be >= 1. Received: max_images={max_images}")
    positions = np.arange(len(labels))
    if len(labels) <= max_images:
        return positions
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if present.min() < 2 or max_images < len(present):
        return np.sort(np.random.default_rng(seed).choice(positions, size=max_images, replace=False))
    kept, _ = train_test_split(positions, train_size=max_images, stratify=labels, random_state=seed)
    return np.sort(kept)


def fit_logistic_regression(
    train_inputs: np.ndarray,
    train_labels: np.ndarray,
    test_inputs: np.ndarray,
    test_labels: np.ndarray,
    *,
    class_names: tuple[str, ...],
    max_iter: int,
    standardise: bool,
) -> tuple[EvaluationResult, int, float]:
    """Fits scikit-learn's logistic regression and scores it on the test inputs.

    Args:
        train_inputs: (N, D) float training vectors.
        train_labels: Their labels.
        test_inputs: (M, D) float test vectors.
        test_labels: Their labels.
        class_names: Label index -> name; a class missing from the training labels gets probability 0.
        max_iter: lbfgs iterations at most.
        standardise: Whether each input dimension is standardised first (scikit-learn's StandardScaler).

    Returns:
        The test scores, the iterations lbfgs took (equal to `max_iter` when it did not converge), and the
        seconds the fit and the predictions took.
    """
    started = time.perf_counter()
    classifier = LogisticRegression(solver=SOLVER, max_iter=max_iter)
    model = make_pipeline(StandardScaler(), classifier) if standardise else classifier
    # One BLAS thread: measured on 2 busy cores, lbfgs on 10,000 x 256 pixels took 2.7 s on one thread and
    # 49 s on two (OpenBLAS threads spinning against TensorFlow's and other processes' threads).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # Not converging is reported in the baseline's line (`converged`), not as a warning without context.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train_inputs, train_labels)
        fitted = model.predict_proba(test_inputs).astype(np.float64)
    # Columns follow the classes seen in training; the scorer wants one column per class.
    probabilities = np.zeros((len(test_inputs), len(class_names)), dtype=np.float64)
    probabilities[:, classifier.classes_] = fitted
    seconds = time.perf_counter() - started
    result = score_predictions(test_labels, probabilities, class_names=class_names)
    return result, int(np.max(classifier.n_iter_)), seconds


def _fitted_baseline(
    name: str,
    title: str,
    description: str,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    *,
    class_names: tuple[str, ...],
    max_iter: int,
    standardise: bool,
    started: float,
) -> BaselineResult:
    """Fits the logistic regression on `data` (train inputs, train labels, test inputs, test labels) and
    describes the result; `started` is when the baseline began, features or pixels included."""
    train_inputs, train_labels, test_inputs, test_labels = data
    result, iterations, fit_seconds = fit_logistic_regression(
        train_inputs,
        train_labels,
        test_inputs,
        test_labels,
        class_names=class_names,
        max_iter=max_iter,
        standardise=standardise,
    )
    return BaselineResult(
        name=name,
        title=title,
        description=description,
        result=result,
        train_images=len(train_labels),
        dimension=train_inputs.shape[1],
        solver=SOLVER,
        iterations=iterations,
        converged=iterations < max_iter,
        seconds=time.perf_counter() - started,
        fit_seconds=fit_seconds,
    )


def downsample_pixels(images: np.ndarray, *, side: int, color: str) -> np.ndarray:
    """uint8 images resized (area average) to side x side and flattened, on [0, 1].

    Args:
        images: (N, H, W) or (N, H, W, C) uint8.
        side: Output height and width.
        color: "grey": the mean of the channels; "stored": every channel the images have.

    Returns:
        float32 (N, side * side * channels).

    Raises:
        ValueError: An unknown color.
    """
    import tensorflow as tf

    if color not in ("grey", "stored"):
        raise ValueError(f"Argument `color` must be grey or stored. Received: color={color!r}")
    channels = images.shape[3] if images.ndim == 4 else 1
    kept = 1 if color == "grey" else channels
    output = np.empty((len(images), side * side * kept), dtype=np.float32)
    for start in range(0, len(images), _RESIZE_CHUNK):
        chunk = np.asarray(images[start : start + _RESIZE_CHUNK], dtype=np.float32) / 255.0
        chunk = chunk.reshape(*chunk.shape[:3], channels)
        if color == "grey":
            chunk = chunk.mean(axis=3, keepdims=True)
        resized = tf.image.resize(chunk, (side, side), method="area").numpy()
        output[start : start + len(chunk)] = resized.reshape(len(chunk), -1)
    return output


def pixel_baseline(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    settings: PixelsParams,
    class_names: tuple[str, ...],
    seed: int,
) -> BaselineResult:
    """Logistic regression on downsampled raw pixels (`evaluate.baselines.pixels`), scored on the test split.

    Args:
        train_images: uint8 training images.
        train_labels: Their labels.
        test_images: uint8 test images (the model's test split).
        test_labels: Their labels.
        settings: The validated `evaluate.baselines.pixels` section.
        class_names: Label index -> name.
        seed: Seed of the training subsample.

    Returns:
        Its scores and what it used.
    """
    started = time.perf_counter()
    kept = stratified_subsample(train_labels, settings.max_train_images, seed=seed)
    train_inputs = downsample_pixels(train_images[kept], side=settings.side, color=settings.color)
    test_inputs = downsample_pixels(test_images, side=settings.side, color=settings.color)
    channels = train_inputs.shape[1] // settings.side**2
    colour = "grey" if settings.color == "grey" else f"{channels}-channel"
    return _fitted_baseline(
        "pixels",
        "pixel baseline",
        f"logistic regression on {settings.side}x{settings.side} {colour} pixels of {len(kept)} training images",
        (train_inputs, train_labels[kept], test_inputs, test_labels),
        class_names=class_names,
        max_iter=settings.max_iter,
        standardise=False,
        started=started,
    )


def frozen_feature_model(backbone: Backbone, *, pooling: str) -> keras.Model:
    """The pretrained backbone up to the head's input: preprocessed image -> pooled features.

    Args:
        backbone: The backbone as `pipeline.backbones.registry.load_backbone` builds it, pretrained.
        pooling: The head's pooling (`head.pooling`).

    Returns:
        A model sharing the backbone's layers, for inference only.
    """
    import keras

    from pipeline.model.head import pool_features

    return keras.Model(backbone.model.input, pool_features(backbone, pooling), name=f"{backbone.name}_features")


def linear_probe(
    backbone: Backbone,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    settings: ProbeParams,
    pooling: str,
    class_names: tuple[str, ...],
    image_size: int,
    batch_size: int,
    seed: int,
    test_features: np.ndarray | None = None,
) -> BaselineResult:
    """Logistic regression on the frozen pretrained backbone's pooled features (`evaluate.baselines.probe`).

    Args:
        backbone: The pretrained backbone (ImageNet weights, nothing fine-tuned).
        train_images: uint8 training images.
        train_labels: Their labels.
        test_images: uint8 test images (the model's test split).
        test_labels: Their labels.
        settings: The validated `evaluate.baselines.probe` section.
        pooling: The head's pooling (`head.pooling`).
        class_names: Label index -> name.
        image_size: The backbone's input size.
        batch_size: Images per forward pass.
        seed: Seed of the training subsample.
        test_features: The test images' pooled features when already computed, in the pass the model's own
            evaluation makes (`pipeline.evaluation.shared_pass`); None computes them here.

    Returns:
        Its scores and what it used.
    """
    started = time.perf_counter()
    model = frozen_feature_model(backbone, pooling=pooling)
    preprocessing = backbone.make_preprocessing()

    def features(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        dataset = image_dataset(
            images, labels, image_size=image_size, batch_size=batch_size, preprocessing=preprocessing
        )
        return np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)

    kept = stratified_subsample(train_labels, settings.max_train_images, seed=seed)
    train_inputs = features(train_images[kept], train_labels[kept])
    test_inputs = features(test_images, test_labels) if test_features is None else test_features
    return _fitted_baseline(
        "probe",
        "linear probe",
        f"logistic regression on {train_inputs.shape[1]} frozen {backbone.name} features of {len(kept)} training "
        "images",
        (train_inputs, train_labels[kept], test_inputs, test_labels),
        class_names=class_names,
        max_iter=settings.max_iter,
        standardise=True,
        started=started,
    )

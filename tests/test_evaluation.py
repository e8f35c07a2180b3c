"""Test-set scoring: exact values on a hand-made example."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation import score_predictions

CLASSES = ("a", "b", "c")


def test_scores_match_hand_computed_values() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]]
    )
    result = score_predictions(labels, probabilities, class_names=CLASSES)
    assert result.accuracy == pytest.approx(4 / 6)
    # a: P=1/2 R=1/2; b: P=2/3 R=1; c: P=1 R=1/2 -> F1 = 1/2, 4/5, 2/3.
    assert result.macro_f1 == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    expected_loss = -np.mean(np.log([0.8, 0.2, 0.8, 0.6, 0.8, 0.3]))
    assert result.loss == pytest.approx(expected_loss)
    assert result.examples == 6
    np.testing.assert_array_equal(result.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert result.per_class["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1-score": 0.8, "support": 2.0}
    assert result.summary() == {
        "accuracy": result.accuracy,
        "macro_f1": result.macro_f1,
        "loss": result.loss,
        "examples": 6,
    }


def test_a_class_never_predicted_scores_zero_without_warning() -> None:
    labels = np.array([0, 1, 2])
    probabilities = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.6, 0.4, 0.0]])
    result = score_predictions(labels, probabilities, class_names=CLASSES)
    assert result.per_class["c"]["f1-score"] == 0.0
    assert math.isfinite(result.loss)


def test_float32_softmax_scores_without_a_probability_warning() -> None:
    import warnings

    import keras

    logits = np.random.default_rng(0).normal(size=(500, 10)).astype("float32") * 8
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    labels = np.random.default_rng(1).integers(0, 10, 500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = score_predictions(labels, probabilities, class_names=tuple(str(index) for index in range(10)))
    expected = -np.mean(np.log(probabilities.astype(np.float64)[np.arange(500), labels]))
    assert result.loss == pytest.approx(expected, rel=1e-6)

"""Test-set scoring, the majority-class baseline and the champion on the same split: exact hand-made values."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest
from scipy import stats

from pipeline.evaluation.comparison import PairedTest
from pipeline.evaluation.metrics import MajorityBaseline, majority_baseline, score_champion, score_predictions
from tests.conftest import brightness_classifier, brightness_images

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
        "roc_auc": result.roc_auc,
        "ece": result.calibration.ece,
    }
    # One-vs-rest, pairs of (positive, negative) ranked right, ties half: a 7/8, b 7/8, c 7.5/8.
    assert result.roc_auc == pytest.approx((7 / 8 + 7 / 8 + 7.5 / 8) / 3)
    assert result.roc_auc_classes == 3
    # Confidence 0.8 (three right), 0.7 (wrong), 0.6 (right), 0.5 (wrong), each in a bin of its own.
    assert result.calibration.ece == pytest.approx((3 * 0.2 + 0.7 + 0.4 + 0.5) / 6)


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


def test_majority_baseline_scores_the_most_frequent_class() -> None:
    labels = np.array([1, 1, 1, 0, 2, 1, 0, 2])
    baseline = majority_baseline(labels, class_names=CLASSES)
    # Always "b": accuracy 4/8; F1 of b = 2 * (1/2 * 1) / (1/2 + 1) = 2/3, of a and c 0.
    assert baseline == MajorityBaseline(class_name="b", accuracy=0.5, macro_f1=pytest.approx((2 / 3) / 3), label=1)
    assert baseline.summary() == {"accuracy": 0.5, "macro_f1": pytest.approx(2 / 9)}
    # Its answers for McNemar's test: right exactly on the b images.
    np.testing.assert_array_equal(baseline.right(labels), [True, True, True, False, False, True, False, False])


def test_majority_baseline_of_a_balanced_split_is_chance() -> None:
    baseline = majority_baseline(np.array([2, 1, 0, 2, 1, 0]), class_names=CLASSES)
    assert (baseline.class_name, baseline.accuracy) == ("a", pytest.approx(1 / 3))


def test_champion_is_scored_on_the_challengers_images() -> None:
    images, labels = brightness_images([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
    champion = brightness_classifier([0, 1, 1])  # right on classes 0 and 1
    scores = score_champion("3", lambda: (champion, CLASSES), images, labels, class_names=CLASSES, batch_size=4)
    assert (scores.version, scores.reason) == ("3", "")
    assert scores.scores["accuracy"] == pytest.approx(0.8)
    assert scores.scores["examples"] == 10
    assert scores.paired is None  # no challenger answers given


def test_champion_scores_carry_mcnemars_test_against_the_challenger() -> None:
    images, labels = brightness_images([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
    champion = brightness_classifier([0, 1, 1])  # right on the 8 images of classes 0 and 1
    challenger_right = np.array([True] * 3 + [False] * 5 + [True] * 2)  # right on 3 of class 0 and both of class 2
    scores = score_champion(
        "3",
        lambda: (champion, CLASSES),
        images,
        labels,
        class_names=CLASSES,
        batch_size=4,
        challenger_right=challenger_right,
    )
    # Only the challenger: the 2 class-2 images; only the champion: 2 of class 0 and 3 of class 1.
    assert scores.paired == PairedTest(challenger_only=2, other_only=5, p_value=stats.binomtest(2, 7, 0.5).pvalue)


def test_the_scores_keep_the_predictions_for_paired_tests() -> None:
    labels = np.array([0, 1, 2, 2])
    probabilities = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    result = score_predictions(labels, probabilities, class_names=CLASSES)
    np.testing.assert_array_equal(result.predictions, [0, 0, 2, 1])
    np.testing.assert_array_equal(result.right(labels), [True, False, True, False])


def test_a_champion_of_another_input_size_is_scored_at_its_own_size() -> None:
    images, labels = brightness_images([0, 1, 2, 2])
    champion = brightness_classifier([0, 1, 2], image_size=12)
    scores = score_champion("1", lambda: (champion, CLASSES), images, labels, class_names=CLASSES, batch_size=4)
    assert scores.scores["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("registered_classes", "reason"),
    [
        (("x", "b", "c"), "its classes (3 classes: x, b, c) are not this run's (3 classes: a, b, c)"),
        (("a", "b", "c", "d", "e"), "its classes (5 classes: a, b, c, d, ...) are not this run's (3 classes: a, b, c)"),
        (None, "it was registered without class names (by an earlier pipeline), so its classes cannot be matched"),
    ],
)
def test_a_champion_of_another_task_is_not_scored(registered_classes: tuple[str, ...] | None, reason: str) -> None:
    images, labels = brightness_images([0, 1, 2])
    champion = brightness_classifier([0, 1, 2])
    scores = score_champion(
        "2", lambda: (champion, registered_classes), images, labels, class_names=CLASSES, batch_size=4
    )
    assert (scores.version, scores.scores, scores.reason) == ("2", None, reason)


def test_a_champion_that_takes_no_images_is_not_scored() -> None:
    inputs = keras.Input((4,))
    champion = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    images, labels = brightness_images([0, 1, 2])
    scores = score_champion("2", lambda: (champion, CLASSES), images, labels, class_names=CLASSES, batch_size=4)
    assert scores.reason == "it takes inputs of shape (None, 4), not square RGB images"


def test_a_champion_that_fails_to_load_is_not_scored() -> None:
    def broken() -> tuple[keras.Model, tuple[str, ...]]:
        raise OSError("No such file or directory: 'mlartifacts/1/models/m-1/artifacts'\nmore detail")

    images, labels = brightness_images([0, 1, 2])
    scores = score_champion("5", broken, images, labels, class_names=CLASSES, batch_size=4)
    assert scores.reason == (
        "it could not be loaded: OSError: No such file or directory: 'mlartifacts/1/models/m-1/artifacts'"
    )


def test_the_models_scores_carry_their_bootstrap_intervals() -> None:
    labels = np.array([0, 1, 2] * 40)
    probabilities = np.eye(3)[np.where(np.arange(120) % 7 == 0, (labels + 1) % 3, labels)]
    result = score_predictions(labels, probabilities, class_names=CLASSES, intervals=True)
    summary = result.summary()
    assert set(summary) == {
        "accuracy", "macro_f1", "loss", "examples", "roc_auc", "ece",
        "accuracy_ci_low", "accuracy_ci_high", "macro_f1_ci_low", "macro_f1_ci_high",
    }  # fmt: skip
    assert summary["accuracy_ci_low"] < result.accuracy < summary["accuracy_ci_high"]
    assert summary["macro_f1_ci_low"] < result.macro_f1 < summary["macro_f1_ci_high"]
    assert score_predictions(labels, probabilities, class_names=CLASSES).intervals == {}


def test_roc_auc_averages_the_classes_the_test_labels_have() -> None:
    import warnings

    # Class c has no test image: its one-vs-rest curve has no positives, and scikit-learn's macro turns NaN.
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.6, 0.3, 0.1], [0.3, 0.4, 0.3], [0.2, 0.7, 0.1], [0.5, 0.25, 0.25]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = score_predictions(labels, probabilities, class_names=CLASSES)
    # a: 0.6 above both negatives (0.2, 0.5), 0.3 above one -> 3/4; b: 0.7 above both (0.3, 0.4), 0.25 above
    # none -> 2/4.
    assert result.roc_auc == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert result.roc_auc_classes == 2
    assert result.summary()["roc_auc"] == result.roc_auc


def test_roc_auc_of_one_class_is_undefined() -> None:
    result = score_predictions(np.array([1, 1]), np.array([[0.2, 0.7, 0.1], [0.5, 0.4, 0.1]]), class_names=CLASSES)
    assert math.isnan(result.roc_auc)
    assert result.roc_auc_classes == 1
    assert math.isnan(result.summary()["roc_auc"])


def test_roc_auc_of_two_classes_ranks_the_second_ones_probability() -> None:
    labels = np.array([0, 1, 1, 0, 1])
    second = np.array([0.2, 0.9, 0.4, 0.6, 0.7])
    result = score_predictions(labels, np.stack([1 - second, second], axis=1), class_names=("no", "yes"))
    # Positives 0.9, 0.4, 0.7 against negatives 0.2, 0.6: 2 + 1 + 2 of 6 pairs.
    assert result.roc_auc == pytest.approx(5 / 6)
    assert result.roc_auc_classes == 2


def test_the_reports_carry_roc_auc_ece_and_the_bins(tmp_path: Path) -> None:
    import json

    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]]
    )
    result = score_predictions(labels, probabilities, class_names=CLASSES)
    result.write(metrics=tmp_path / "metrics.json", report=tmp_path / "report.json", class_names=CLASSES)
    test = json.loads((tmp_path / "metrics.json").read_text())["test"]
    assert (test["roc_auc"], test["ece"]) == (result.roc_auc, result.calibration.ece)
    calibration = json.loads((tmp_path / "report.json").read_text())["calibration"]
    assert sum(calibration["counts"]) == 6 and len(calibration["counts"]) == 15
    assert calibration["accuracy"][0] is None  # no answer below 1/15
    assert calibration["ece"] == result.calibration.ece

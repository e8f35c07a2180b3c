"""The classical baselines: the capped stratified subsample, pixels downsampled, a pixel baseline and a linear probe
scored on tiny separable data (pipeline/evaluation/baselines.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.baselines import (
    BaselineResult,
    downsample_pixels,
    fit_logistic_regression,
    linear_probe,
    pixel_baseline,
    stratified_subsample,
)
from pipeline.evaluation.metrics import score_predictions
from pipeline.params.baselines import PixelsParams, ProbeParams

CLASSES = ("dark", "bright")


def _two_brightness_classes(count: int, *, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Grey images whose class is their brightness: dark (pixels 0..59) or bright (150..249), alternating."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = rng.integers(0, 60, (count, size, size)) + 150 * labels[:, None, None]
    return images.astype(np.uint8), labels.astype(np.int64)


def test_the_subsample_is_capped_exactly_and_keeps_the_class_shares() -> None:
    labels = np.array([0] * 100 + [1] * 50)
    kept = stratified_subsample(labels, 30, seed=0)
    assert len(kept) == 30
    assert np.bincount(labels[kept]).tolist() == [20, 10]
    assert (np.diff(kept) > 0).all()  # sorted, no position twice
    np.testing.assert_array_equal(kept, stratified_subsample(labels, 30, seed=0))  # seeded
    assert not np.array_equal(kept, stratified_subsample(labels, 30, seed=1))


def test_a_split_under_the_cap_is_kept_whole() -> None:
    labels = np.array([0, 1, 1, 0, 2])
    assert stratified_subsample(labels, 5, seed=0).tolist() == [0, 1, 2, 3, 4]


def test_a_class_of_one_image_falls_back_to_a_plain_seeded_draw() -> None:
    # scikit-learn cannot stratify a class of one image; the cap still holds.
    labels = np.array([0] * 10 + [1])
    kept = stratified_subsample(labels, 5, seed=3)
    assert len(kept) == 5 and len(set(kept.tolist())) == 5
    np.testing.assert_array_equal(kept, stratified_subsample(labels, 5, seed=3))


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Argument `max_images` must be >= 1. Received: max_images=0"):
        stratified_subsample(np.array([0, 1]), 0, seed=0)


def test_pixels_are_area_averaged_and_scaled_to_one() -> None:
    image = np.zeros((1, 4, 4), np.uint8)
    image[0, :2, :2] = 255  # the top-left quarter white
    image[0, 2:, 2:] = 51  # the bottom-right quarter at 0.2
    np.testing.assert_allclose(downsample_pixels(image, side=2, color="grey"), [[1.0, 0.0, 0.0, 0.2]], atol=1e-6)
    np.testing.assert_allclose(downsample_pixels(image, side=1, color="grey"), [[0.3]], atol=1e-6)


def test_colour_images_are_grey_or_every_channel() -> None:
    image = np.zeros((1, 2, 2, 3), np.uint8)
    image[..., 0] = 255  # pure red
    np.testing.assert_allclose(downsample_pixels(image, side=1, color="grey"), [[1 / 3]], atol=1e-6)
    np.testing.assert_allclose(downsample_pixels(image, side=1, color="stored"), [[1.0, 0.0, 0.0]], atol=1e-6)
    with pytest.raises(ValueError, match=r"Argument `color` must be grey or stored. Received: color='rgb'"):
        downsample_pixels(image, side=1, color="rgb")


def test_the_pixel_baseline_separates_two_brightness_classes_on_a_capped_subsample() -> None:
    train_images, train_labels = _two_brightness_classes(60, seed=1)
    test_images, test_labels = _two_brightness_classes(20, seed=2)
    settings = PixelsParams(max_train_images=30, side=4)
    result = pixel_baseline(
        train_images, train_labels, test_images, test_labels, settings=settings, class_names=CLASSES, seed=0
    )
    assert (result.name, result.title, result.train_images, result.dimension) == ("pixels", "pixel baseline", 30, 16)
    assert (result.result.accuracy, result.result.macro_f1, result.result.examples) == (1.0, 1.0, 20)
    assert (result.solver, result.converged) == ("lbfgs", True)
    assert result.description == "logistic regression on 4x4 grey pixels of 30 training images"
    scores = result.scores()
    assert scores.scores["accuracy"] == 1.0
    assert {key: scores.details[key] for key in ("train_images", "dimension", "solver")} == {
        "train_images": 30,
        "dimension": 16,
        "solver": "lbfgs",
    }


def test_stored_colour_pixels_are_three_times_wider() -> None:
    grey, labels = _two_brightness_classes(20, seed=1, size=8)
    colour = np.repeat(grey[..., None], 3, axis=3)
    settings = PixelsParams(side=2, color="stored")
    result = pixel_baseline(colour, labels, colour, labels, settings=settings, class_names=CLASSES, seed=0)
    assert (result.dimension, result.train_images) == (12, 20)
    assert result.description == "logistic regression on 2x2 3-channel pixels of 20 training images"


def test_a_class_absent_from_the_training_subsample_gets_probability_zero() -> None:
    train = np.array([[0.0], [0.1], [0.9], [1.0]])
    test = np.array([[0.05], [0.95]])
    result, iterations, _ = fit_logistic_regression(
        train,
        np.array([0, 0, 2, 2]),
        test,
        np.array([0, 2]),
        class_names=("a", "b", "c"),
        max_iter=100,
        standardise=True,
    )
    assert (result.accuracy, result.per_class["b"]["support"]) == (1.0, 0.0)
    assert 0 < iterations < 100


def test_an_unconverged_fit_says_so_in_its_line() -> None:
    images, labels = _two_brightness_classes(40, seed=1, size=8)
    result = pixel_baseline(
        images, labels, images, labels, settings=PixelsParams(side=8, max_iter=10), class_names=CLASSES, seed=0
    )
    assert (result.iterations, result.converged) == (10, False)
    assert result.line().endswith(", lbfgs stopped at max_iter 10 before converging")


def test_the_line_says_what_it_used_its_scores_and_cost() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    scored = score_predictions(np.array([0, 1, 1, 1]), probabilities, class_names=CLASSES)
    result = BaselineResult(
        name="probe",
        title="linear probe",
        description="logistic regression on 1280 frozen efficientnet_lite0 features of 2000 training images",
        result=scored,
        train_images=2000,
        dimension=1280,
        solver="lbfgs",
        iterations=120,
        converged=True,
        seconds=3.14,
        fit_seconds=0.42,
    )
    assert result.line() == (
        "linear probe (logistic regression on 1280 frozen efficientnet_lite0 features of 2000 training images): "
        "accuracy 0.7500, macro F1 0.7333, 3.1 s (0.4 s fitting)"
    )


def _mean_colour_backbone():
    """A backbone whose feature map is the preprocessed image itself: avg pooling gives its mean colour."""
    import keras

    from pipeline.backbones.base import Backbone

    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Identity(name="stem_identity")(inputs)
    return Backbone(
        name="identity",
        model=keras.Model(inputs, features),
        blocks_top_down=(),
        make_preprocessing=lambda: keras.layers.Rescaling(1 / 255.0, name="preprocessing"),
    )


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_the_linear_probe_fits_on_the_frozen_pooled_features(pooling: str) -> None:
    train_images, train_labels = _two_brightness_classes(40, seed=1)
    test_images, test_labels = _two_brightness_classes(10, seed=2)
    result = linear_probe(
        _mean_colour_backbone(),
        train_images,
        train_labels,
        test_images,
        test_labels,
        settings=ProbeParams(max_train_images=16),
        pooling=pooling,
        class_names=CLASSES,
        image_size=8,
        batch_size=8,
        seed=0,
    )
    assert (result.name, result.train_images, result.dimension) == ("probe", 16, 3)
    assert (result.result.accuracy, result.result.examples) == (1.0, 10)
    assert result.description == "logistic regression on 3 frozen identity features of 16 training images"
    assert result.seconds >= result.fit_seconds > 0

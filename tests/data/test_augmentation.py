"""Augmentation: Keras' random layers, each switch really changes training images, never other images."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.data.augmentation import build_augmentation, cacheable_flip
from pipeline.data.datasets import flip_images
from pipeline.params.train import AugmentationParams
from tests.data.conftest import IMAGES


def _augmentation(*, seed: int = 0, **switches):
    """The augmentation of a `train.augmentation` section with `switches` on."""
    return build_augmentation(AugmentationParams(**switches), seed=seed)


def test_all_switches_off_gives_no_layer() -> None:
    assert _augmentation() is None


@pytest.mark.parametrize(
    ("switch", "layer_type"),
    [
        ({"flip": "horizontal"}, keras.layers.RandomFlip),
        ({"rotation": 0.1}, keras.layers.RandomRotation),
        ({"zoom": 0.2}, keras.layers.RandomZoom),
        ({"translation": 0.1}, keras.layers.RandomTranslation),
        ({"contrast": 0.3}, keras.layers.RandomContrast),
    ],
)
def test_each_switch_adds_its_layer_active_only_in_training(switch, layer_type) -> None:
    augmentation = _augmentation(**switch, seed=1)
    assert [type(layer) for layer in augmentation.layers] == [layer_type]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augmentation(IMAGES, training=False)), IMAGES)
    changed = keras.ops.convert_to_numpy(augmentation(IMAGES, training=True))
    assert changed.shape == IMAGES.shape
    assert not np.allclose(changed, IMAGES)


def test_horizontal_flip_mirrors_or_keeps_each_image() -> None:
    flipped = keras.ops.convert_to_numpy(_augmentation(flip="horizontal", seed=3)(IMAGES, training=True))
    mirrored = IMAGES[:, :, ::-1, :]
    outcomes = [
        "mirrored" if np.allclose(after, mirror) else "kept" if np.allclose(after, before) else "other"
        for after, before, mirror in zip(flipped, IMAGES, mirrored, strict=True)
    ]
    assert "other" not in outcomes
    assert "mirrored" in outcomes


def test_switches_chain_in_a_fixed_order() -> None:
    augmentation = _augmentation(flip="vertical", rotation=0.05, zoom=0.1, translation=0.1, contrast=0.1)
    assert [layer.name for layer in augmentation.layers] == [
        "augment_flip",
        "augment_rotation",
        "augment_zoom",
        "augment_translation",
        "augment_contrast",
    ]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("horizontal", IMAGES[:, :, ::-1, :]),
        ("vertical", IMAGES[:, ::-1, :, :]),
        ("horizontal_and_vertical", IMAGES[:, ::-1, ::-1, :]),
    ],
)
def test_flip_images_is_the_one_other_orientation_random_flip_produces(mode: str, expected: np.ndarray) -> None:
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(flip_images(IMAGES, mode)), expected)
    outputs = keras.ops.convert_to_numpy(_augmentation(flip=mode, seed=5)(IMAGES, training=True))
    outcomes = [
        "flipped" if np.array_equal(out, flip) else "kept" if np.array_equal(out, image) else "other"
        for out, image, flip in zip(outputs, IMAGES, expected, strict=True)
    ]
    assert "other" not in outcomes
    assert {"flipped", "kept"} == set(outcomes)


def test_only_a_flip_alone_is_cacheable() -> None:
    assert cacheable_flip(None) is None
    assert cacheable_flip(_augmentation(flip="vertical")) == "vertical"
    assert cacheable_flip(_augmentation(flip="horizontal_and_vertical")) == "horizontal_and_vertical"
    assert cacheable_flip(_augmentation(rotation=0.1)) is None
    assert cacheable_flip(_augmentation(flip="horizontal", zoom=0.1)) is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"flip": "diagonal"}, "Input should be 'none', 'horizontal', 'vertical' or 'horizontal_and_vertical'"),
        ({"zoom": -0.1}, "Input should be greater than or equal to 0"),
    ],
)
def test_bad_settings_are_refused_by_the_params_model(arguments, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AugmentationParams(**arguments)

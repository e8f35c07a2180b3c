"""Augmentation: Keras' random layers, each switch really changes training images, never other images."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.augmentation import build_augmentation

IMAGES = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")


def test_all_switches_off_gives_no_layer() -> None:
    assert build_augmentation() is None


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
    augmentation = build_augmentation(**switch, seed=1)
    assert [type(layer) for layer in augmentation.layers] == [layer_type]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augmentation(IMAGES, training=False)), IMAGES)
    changed = keras.ops.convert_to_numpy(augmentation(IMAGES, training=True))
    assert changed.shape == IMAGES.shape
    assert not np.allclose(changed, IMAGES)


def test_horizontal_flip_mirrors_or_keeps_each_image() -> None:
    flipped = keras.ops.convert_to_numpy(build_augmentation(flip="horizontal", seed=3)(IMAGES, training=True))
    mirrored = IMAGES[:, :, ::-1, :]
    outcomes = [
        "mirrored" if np.allclose(after, mirror) else "kept" if np.allclose(after, before) else "other"
        for after, before, mirror in zip(flipped, IMAGES, mirrored, strict=True)
    ]
    assert "other" not in outcomes
    assert "mirrored" in outcomes


def test_switches_chain_in_a_fixed_order() -> None:
    augmentation = build_augmentation(flip="vertical", rotation=0.05, zoom=0.1, translation=0.1, contrast=0.1)
    assert [layer.name for layer in augmentation.layers] == [
        "augment_flip",
        "augment_rotation",
        "augment_zoom",
        "augment_translation",
        "augment_contrast",
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"flip": "diagonal"}, "unknown flip 'diagonal'; allowed: none, horizontal, vertical"),
        ({"zoom": -0.1}, "zoom is -0.1"),
    ],
)
def test_bad_arguments_are_refused(arguments, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_augmentation(**arguments)

"""Shared fixtures: a tiny backbone with named block groups and calibrated BatchNormalization."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from collections.abc import Callable

import numpy as np
import pytest

TINY_GROUPS = [("top", "top_"), ("block2", "block2"), ("block1", "block1"), ("stem", "stem_")]


def build_tiny_backbone(image_size: int = 16, seed: int = 0):
    """A 4-group conv net whose BN statistics are calibrated on random inputs.

    Why calibrated: freshly initialised BN (mean 0, variance 1) shrinks activations so much that
    gradients into the convolutions vanish, and a test of "unfrozen weights changed" would be weak.
    """
    import keras

    from pipeline.backbones.registry import Backbone, group_layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3))
    tensor = inputs
    for prefix, filters, strides in (("stem_", 4, 2), ("block1a_", 8, 1), ("block2a_", 8, 2), ("top_", 16, 1)):
        tensor = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{prefix}conv")(
            tensor
        )
        tensor = keras.layers.BatchNormalization(name=f"{prefix}bn")(tensor)
        tensor = keras.layers.ReLU(name=f"{prefix}activation")(tensor)
    model = keras.Model(inputs, tensor, name="tiny")

    probe = np.random.default_rng(seed).uniform(-1, 1, (32, image_size, image_size, 3)).astype("float32")
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            upstream = keras.Model(model.input, layer.input).predict(probe, verbose=0)
            mean = upstream.mean(axis=(0, 1, 2))
            variance = upstream.var(axis=(0, 1, 2)) + 1e-3
            gamma, beta = layer.get_weights()[:2]
            layer.set_weights([gamma, beta, mean, variance])
    return Backbone(
        name="tiny",
        model=model,
        blocks_top_down=group_layers(model, TINY_GROUPS),
        make_preprocessing=lambda: keras.layers.Rescaling(1 / 127.5, -1.0, name="preprocessing"),
    )


def make_images(count: int, classes: int, seed: int = 0, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """uint8 grey images whose class is visible (a bright row at a class-dependent height)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    images = rng.integers(0, 60, (count, size, size)).astype(np.uint8)
    for position, label in enumerate(labels):
        images[position, (label * size) // classes, :] = 250
    return images, labels.astype(np.int64)


def brightness_classifier(mapping: list[int], *, image_size: int = 8):
    """A classifier of `brightness_images` with set weights: it reads the true class, then answers `mapping[c]`.

    Why: the champion gate's tests need models of exactly known accuracy on a given split.
    """
    import keras

    classes = len(mapping)
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    brightness = keras.layers.GlobalAveragePooling2D()(pixels)
    # logit_c = c v - 50 c^2 = -50 ((c - k)^2 - k^2) at v = 100 k: the true class k leads by at least 50.
    true_class = keras.layers.Dense(classes, activation="softmax")(brightness)
    answer = keras.layers.Dense(classes, activation="softmax", use_bias=False)(true_class)
    model = keras.Model(pixels, answer)
    kernel = np.zeros((3, classes), np.float32)
    kernel[0] = np.arange(classes)
    model.layers[2].set_weights([kernel, -50.0 * np.arange(classes, dtype=np.float32) ** 2])
    model.layers[3].set_weights([np.eye(classes, dtype=np.float32)[mapping] * 50])
    return model


def brightness_images(labels: list[int], size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB images whose every pixel is 100 x their label (0, 100, 200), and the labels."""
    return np.stack([np.full((size, size, 3), 100 * label, np.uint8) for label in labels]), np.array(labels)


@pytest.fixture
def tiny_backbone() -> Callable[..., object]:
    return build_tiny_backbone

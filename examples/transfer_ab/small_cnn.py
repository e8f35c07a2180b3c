"""Writes the untrained small CNN that task A of the transfer example starts from: an architecture, random weights.

Why a file: the pipeline fine-tunes backbones, and a network learned from scratch enters it as a local
.keras file whose weights are still their initial draw (task A then trains every layer). Why this network:
it is small enough for task A to learn all of Fashion-MNIST's 8 classes in about a minute on 2 CPU cores,
and, like the plain networks of Hands-On ML's example, it has no BatchNormalization, so that the scratch arm
of task B can learn from 200 images at all (see README.md: EfficientNet-Lite0 from scratch could not).

Usage: python small_cnn.py OUTPUT.keras
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

IMAGE_SIZE = 32  # the pipeline's smallest input; Fashion-MNIST's 28 px images are resized to it


def build_small_cnn(seed: int = 42) -> keras.Model:
    """Three conv-pool stages and a 128-unit feature layer; pixels 0..255 in, features out (no classifier)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    tensor = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    for index, filters in enumerate((32, 64, 128), start=1):
        tensor = keras.layers.Conv2D(
            filters, 3, padding="same", activation="relu", kernel_initializer="he_normal", name=f"conv{index}"
        )(tensor)
        tensor = keras.layers.MaxPooling2D(name=f"pool{index}")(tensor)
    tensor = keras.layers.Flatten(name="flatten")(tensor)
    features = keras.layers.Dense(128, activation="relu", kernel_initializer="he_normal", name="features")(tensor)
    return keras.Model(inputs, features, name="small_cnn")


if __name__ == "__main__":
    from pipeline.runtime import native_log

    # Quiet like the stages: TensorFlow's start-up lines are filtered before Keras loads.
    native_log.quiet_libraries()
    log_filter = native_log.install()
    try:
        build_small_cnn().save(sys.argv[1])
    finally:
        if log_filter is not None:
            log_filter.uninstall()

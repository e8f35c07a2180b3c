"""The training loss: cross-entropy over the classes, with label smoothing when asked.

Why a module: Keras 3's SparseCategoricalCrossentropy has no `label_smoothing`; its
CategoricalCrossentropy has. So smoothing needs one-hot labels, and the input pipeline and the loss
must agree on that; both decisions are made here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


def classification_loss(*, label_smoothing: float) -> keras.losses.Loss:
    """Sparse cross-entropy, or one-hot cross-entropy with smoothing when `label_smoothing` > 0.

    Args:
        label_smoothing: Share of the target's mass spread evenly over all classes, in [0, 1).

    Returns:
        The loss `fit` minimises; with smoothing it expects one-hot labels (see `one_hot_labels`).

    Raises:
        ValueError: `label_smoothing` outside [0, 1).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing is {label_smoothing}; it must be in [0, 1)")
    import keras

    if label_smoothing:
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def needs_one_hot(*, label_smoothing: float) -> bool:
    """Whether `classification_loss` expects one-hot labels."""
    return label_smoothing > 0


def one_hot_labels(dataset: tf.data.Dataset, *, num_classes: int) -> tf.data.Dataset:
    """Turns the integer labels of a batched (inputs, labels) dataset into one-hot float vectors."""
    import tensorflow as tf

    return dataset.map(lambda inputs, labels: (inputs, tf.one_hot(labels, num_classes)))

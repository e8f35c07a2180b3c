"""The training loss: sparse cross-entropy, or label-smoothed cross-entropy on one-hot labels."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.training.losses import classification_loss, needs_one_hot, one_hot_labels

PROBABILITIES = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype="float32")
LABELS = np.array([0, 2])


def test_without_smoothing_the_loss_is_sparse_cross_entropy() -> None:
    loss = classification_loss(label_smoothing=0.0)
    assert isinstance(loss, keras.losses.SparseCategoricalCrossentropy)
    assert not needs_one_hot(label_smoothing=0.0)
    expected = -np.mean(np.log([0.7, 0.6]))
    assert float(loss(LABELS, PROBABILITIES)) == pytest.approx(expected, rel=1e-6)


def test_smoothing_spreads_the_target_over_all_classes() -> None:
    smoothing = 0.2
    loss = classification_loss(label_smoothing=smoothing)
    assert needs_one_hot(label_smoothing=smoothing)
    targets = np.eye(3)[LABELS] * (1 - smoothing) + smoothing / 3
    expected = -np.mean(np.sum(targets * np.log(PROBABILITIES), axis=1))
    assert float(loss(np.eye(3)[LABELS], PROBABILITIES)) == pytest.approx(expected, rel=1e-6)


def test_one_hot_labels_keeps_the_inputs() -> None:
    dataset = tf.data.Dataset.from_tensor_slices((np.ones((2, 4), "float32"), LABELS)).batch(2)
    inputs, labels = next(iter(one_hot_labels(dataset, num_classes=3)))
    np.testing.assert_array_equal(labels.numpy(), [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(inputs.numpy(), np.ones((2, 4)))


@pytest.mark.parametrize("smoothing", [-0.1, 1.0])
def test_smoothing_out_of_range(smoothing: float) -> None:
    with pytest.raises(ValueError, match=f"label_smoothing is {smoothing}; it must be in \\[0, 1\\)"):
        classification_loss(label_smoothing=smoothing)

"""The new head: pooling, dropout and a float32 softmax over the new classes."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.head import HEAD_DROPOUT, HEAD_POOL, HEAD_PREDICTIONS, attach_head


@pytest.mark.parametrize(("pooling", "layer_type"), [("avg", "GlobalAveragePooling2D"), ("max", "GlobalMaxPooling2D")])
def test_head_replaces_the_classifier(tiny_backbone, pooling: str, layer_type: str) -> None:
    classifier = attach_head(tiny_backbone(), num_classes=5, pooling=pooling, dropout=0.3, seed=0)
    model = classifier.model
    assert [layer.name for layer in model.layers[-3:]] == [HEAD_POOL, HEAD_DROPOUT, HEAD_PREDICTIONS]
    assert type(model.get_layer(HEAD_POOL)).__name__ == layer_type
    assert model.get_layer(HEAD_DROPOUT).rate == 0.3
    assert model.output_shape == (None, 5)
    assert classifier.pooled is model.get_layer(HEAD_POOL).output
    probabilities = model.predict(np.zeros((2, 16, 16, 3), np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_head_output_stays_float32_under_mixed_precision(tiny_backbone) -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        classifier = attach_head(tiny_backbone(), num_classes=3, pooling="avg", dropout=0.0, seed=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert classifier.model.get_layer(HEAD_PREDICTIONS).dtype_policy.compute_dtype == "float32"


def test_same_seed_same_head_weights(tiny_backbone) -> None:
    first = attach_head(tiny_backbone(), num_classes=3, pooling="avg", dropout=0.0, seed=3)
    second = attach_head(tiny_backbone(), num_classes=3, pooling="avg", dropout=0.0, seed=3)
    for left, right in zip(
        first.model.get_layer(HEAD_PREDICTIONS).get_weights(),
        second.model.get_layer(HEAD_PREDICTIONS).get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(left, right)


def test_unknown_pooling_lists_the_allowed_ones(tiny_backbone) -> None:
    with pytest.raises(ValueError, match="unknown pooling 'median'; allowed: avg, max"):
        attach_head(tiny_backbone(), num_classes=3, pooling="median", dropout=0.0, seed=0)

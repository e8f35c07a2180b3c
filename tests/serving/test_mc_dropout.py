"""MC dropout: only dropout layers turn stochastic (BatchNorm stays in inference), stats equal numpy's."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.serving import mc_dropout
from pipeline.serving.predict import forward_function

INPUTS = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)


def _model(rate: float) -> keras.Model:
    """Dense -> BN (moving statistics far from any batch's) -> Dropout -> softmax, nested in an outer model."""
    keras.utils.set_random_seed(0)
    inner_input = keras.Input((8,))
    normalised = keras.layers.BatchNormalization(name="bn")(inner_input)
    dropped = keras.layers.Dropout(rate, name="drop")(normalised)
    inner = keras.Model(inner_input, keras.layers.Dense(3, activation="softmax")(dropped), name="head")
    outer_input = keras.Input((4,))
    model = keras.Model(outer_input, inner(keras.layers.Dense(8, name="dense")(outer_input)), name="outer")
    bn = model.get_layer("head").get_layer("bn")
    bn.set_weights([np.full(8, 2.0), np.full(8, 0.5), np.full(8, 3.0), np.full(8, 4.0)])
    return model


def test_dropout_layers_are_found_in_nested_models() -> None:
    assert [layer.name for layer in mc_dropout.dropout_layers(_model(0.5))] == ["drop"]


def test_only_dropout_is_stochastic_batch_norm_keeps_its_moving_statistics() -> None:
    model = _model(0.0)
    bn = model.get_layer("head").get_layer("bn")
    before = [weight.copy() for weight in bn.get_weights()]
    deterministic = model.predict(INPUTS, verbose=0)
    samples = mc_dropout.sample(forward_function(mc_dropout.stochastic_model(model)), INPUTS, passes=3)
    # With a rate of 0 the dropout is the identity: any difference would come from BatchNorm in training mode.
    for outputs in samples:
        np.testing.assert_allclose(outputs, deterministic, rtol=1e-6, atol=1e-7)
    for weight, earlier in zip(bn.get_weights(), before, strict=True):
        np.testing.assert_array_equal(weight, earlier)
    # What is avoided: the whole model in training mode normalises with the batch's statistics.
    assert np.abs(np.asarray(model(INPUTS, training=True)) - deterministic).max() > 0.05


def test_passes_differ_and_the_summary_is_numpys_mean_and_std() -> None:
    model = _model(0.5)
    deterministic = model.predict(INPUTS, verbose=0)
    samples = mc_dropout.sample(forward_function(mc_dropout.stochastic_model(model)), INPUTS, passes=8)
    assert samples.shape == (8, 6, 3)
    assert len({outputs.tobytes() for outputs in samples}) == 8
    mean, std = mc_dropout.summarize(samples)
    np.testing.assert_array_equal(mean, np.mean(samples.astype(np.float64), axis=0))
    np.testing.assert_array_equal(std, np.std(samples.astype(np.float64), axis=0))
    # Every probability of every input varies over the passes, not only the largest spread.
    assert std.min() > 0 and std.max() > 0.01
    # The original model is untouched: still deterministic in inference.
    np.testing.assert_array_equal(model.predict(INPUTS, verbose=0), deterministic)


def test_refusals() -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs), name="plain")
    with pytest.raises(ValueError, match="model plain has no dropout layer .*every pass would give the same"):
        mc_dropout.stochastic_model(plain)
    with pytest.raises(ValueError, match="MC dropout needs at least 2 passes, received 1"):
        mc_dropout.sample(lambda images: images, INPUTS, passes=1)

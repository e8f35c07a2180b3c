"""Discriminative learning rates: the update, not the gradient, is scaled, for every optimiser."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.layerwise import block_multipliers, layerwise_class, variable_multipliers
from pipeline.optimizers import OPTIMIZER_NAMES, make_optimizer

GRADIENT = np.array([0.5, -1.0, 2.0], "float32")
DECAY = 2.6


def _pair(name: str, *, steps: int, **options):
    top = keras.Variable(np.zeros(3, "float32"), name="top")
    lower = keras.Variable(np.zeros(3, "float32"), name="lower")
    optimizer = make_optimizer(
        name, learning_rate=0.01, options=options, variable_multipliers={top.path: 1.0, lower.path: 1 / DECAY}
    )
    for _ in range(steps):
        optimizer.apply([GRADIENT, GRADIENT], [top, lower])
    return np.array(top), np.array(lower), optimizer


def test_sgd_lower_block_moves_exactly_the_configured_fraction() -> None:
    top, lower, optimizer = _pair("sgd", steps=1)
    np.testing.assert_allclose(top, -0.01 * GRADIENT, rtol=1e-7)
    np.testing.assert_allclose(lower / top, np.full(3, 1 / DECAY), rtol=1e-6)
    assert type(optimizer).__name__ == "LayerwiseSGD"
    assert float(optimizer.learning_rate) == pytest.approx(0.01, rel=1e-7)


@pytest.mark.parametrize("steps", [1, 5])
def test_adam_scales_the_update_not_the_gradient(steps: int) -> None:
    # Adam divides by the running gradient scale: a scaled gradient would leave the step unchanged.
    top, lower, _ = _pair("adam", steps=steps)
    np.testing.assert_allclose(lower / top, np.full(3, 1 / DECAY), rtol=1e-6)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_optimizer_and_clipping(name: str) -> None:
    top, lower, _ = _pair(name, steps=2, clipnorm=1.0)
    np.testing.assert_allclose(lower / top, np.full(3, 1 / DECAY), rtol=1e-5)


def test_multipliers_of_all_one_give_the_plain_optimizer() -> None:
    optimizer = make_optimizer("adam", learning_rate=0.1, variable_multipliers={"dense/kernel": 1.0})
    assert type(optimizer) is keras.optimizers.Adam


def test_fit_matches_a_plain_optimizer_at_the_multiplied_rate() -> None:
    """Through compile and fit (a traced train step), each layer moves as if trained at its own LR."""

    def model() -> keras.Model:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(3, name="lower")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2, name="upper")(hidden))

    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 2)).astype("float32")
    layerwise = model()
    multipliers = variable_multipliers(layerwise, {"lower": 0.25})
    assert multipliers == {"lower/kernel": 0.25, "lower/bias": 0.25}
    layerwise.compile(make_optimizer("sgd", learning_rate=0.1, variable_multipliers=multipliers), loss="mse")
    layerwise.fit(x, y, batch_size=16, epochs=1, verbose=0)
    # One step: the upper layer moves as at LR 0.1, the lower as at 0.025, from the same gradients.
    for learning_rate, layer in ((0.1, "upper"), (0.025, "lower")):
        plain = model()
        plain.compile(keras.optimizers.SGD(learning_rate), loss="mse")
        plain.fit(x, y, batch_size=16, epochs=1, verbose=0)
        for trained, reference in zip(
            layerwise.get_layer(layer).get_weights(), plain.get_layer(layer).get_weights(), strict=True
        ):
            np.testing.assert_allclose(trained, reference, rtol=1e-6, atol=1e-7)


def test_loss_scale_wrapper_and_schedule() -> None:
    variable = keras.Variable(np.zeros(3, "float32"), name="v")
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    inner = make_optimizer("sgd", learning_rate=schedule, variable_multipliers={variable.path: 0.5})
    wrapped = keras.optimizers.LossScaleOptimizer(inner, initial_scale=4.0)
    wrapped.apply([GRADIENT * 4.0], [variable])
    np.testing.assert_allclose(np.array(variable), -0.1 * 0.5 * GRADIENT, rtol=1e-6)


def test_block_multipliers_decay_from_the_top() -> None:
    blocks = [("top_conv", "top_bn"), ("block7a",), ("block6a",), ("stem",)]
    assert block_multipliers(blocks, trainable_blocks=3, decay_per_block=DECAY) == pytest.approx(
        {"top_conv": 1 / DECAY, "top_bn": 1 / DECAY, "block7a": 1 / DECAY**2, "block6a": 1 / DECAY**3}, rel=1e-12
    )
    assert block_multipliers(blocks, trainable_blocks=3, decay_per_block=1.0) == {}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"trainable_blocks": 1, "decay_per_block": 0.5}, "decay_per_block is 0.5; it must be >= 1"),
        ({"trainable_blocks": 3, "decay_per_block": 2.0}, "trainable_blocks is 3; there are 2 blocks"),
    ],
)
def test_block_multiplier_arguments_are_checked(arguments, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        block_multipliers([("a",), ("b",)], **arguments)


def test_layerwise_classes_are_made_once_and_keep_their_config() -> None:
    assert layerwise_class(keras.optimizers.Adam) is layerwise_class(keras.optimizers.Adam)
    optimizer = make_optimizer("adam", learning_rate=0.1, variable_multipliers={"x/kernel": 0.5})
    assert optimizer.get_config()["variable_multipliers"] == {"x/kernel": 0.5}

"""Discriminative learning rates: the update, not the gradient, is scaled, for every optimiser."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.optim.layerwise import (
    block_multipliers,
    layerwise_class,
    variable_multipliers,
)
from pipeline.optim.optimizers import OPTIMIZER_NAMES, custom_objects, make_optimizer
from tests.conftest import optimizer_settings

# Powers of two, so that `learning_rate * gradient` is exact in float32.
GRADIENT = np.array([0.5, -1.0, 2.0], "float32")
DECAY = 2.6


def _make(name: str, *, options=None, **arguments):
    """`make_optimizer` on the params model of `name` with `options`."""
    return make_optimizer(optimizer_settings(name, **(options or {})), **arguments)


def _pair(name: str, *, steps: int, learning_rate: float = 0.01, **options):
    top = keras.Variable(np.zeros(3, "float32"), name="top")
    lower = keras.Variable(np.zeros(3, "float32"), name="lower")
    optimizer = _make(
        name,
        learning_rate=learning_rate,
        options=options,
        variable_multipliers={top.path: 1.0, lower.path: 1 / DECAY},
    )
    for _ in range(steps):
        optimizer.apply([GRADIENT, GRADIENT], [top, lower])
    return np.array(top), np.array(lower), optimizer


def test_sgd_lower_block_moves_exactly_the_configured_fraction() -> None:
    top, lower, optimizer = _pair("sgd", steps=1)
    np.testing.assert_array_equal(top, -np.float32(0.01) * GRADIENT)
    np.testing.assert_allclose(lower / top, np.full(3, 1 / DECAY), rtol=1e-7)
    assert type(optimizer).__name__ == "LayerwiseSGD"
    assert isinstance(optimizer, keras.optimizers.SGD)
    # The logged LR stays the base LR.
    assert float(optimizer.learning_rate) == np.float32(0.01)


@pytest.mark.parametrize("steps", [1, 5])
def test_adam_scales_the_update_not_the_gradient(steps: int) -> None:
    # Adam divides by the running gradient scale: a scaled gradient would leave the step unchanged.
    top, lower, _ = _pair("adam", steps=steps)
    np.testing.assert_allclose(lower / top, np.full(3, 1 / DECAY), rtol=1e-6)
    # And the top really took Adam's steps (about lr each, whatever the gradient's size).
    assert np.abs(top).min() > 0.9 * 0.01 * steps


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_each_variable_trains_as_under_a_plain_optimizer_at_its_own_rate(name: str) -> None:
    """For every optimiser, with clipping (and AdamW's default decay): layer-wise == plain at lr * multiplier."""
    gradients = [np.array([0.5, -1.0, 2.0], "float32") * scale for scale in (1.0, 3.0, -0.5)]
    # From zero, so that even Adadelta's tiny steps are resolved to float32 precision.
    start = np.zeros(3, "float32")
    top, lower = keras.Variable(start, name="top"), keras.Variable(start, name="lower")
    layerwise = _make(name, learning_rate=0.01, options={"clipnorm": 1.0}, variable_multipliers={lower.path: 0.25})
    references = {}
    for learning_rate in (0.01, 0.0025):
        variable = keras.Variable(start, name="reference")
        plain = _make(name, learning_rate=learning_rate, options={"clipnorm": 1.0})
        for gradient in gradients:
            plain.apply([gradient], [variable])
        references[learning_rate] = np.array(variable)
    for gradient in gradients:
        layerwise.apply([gradient, gradient], [top, lower])
    np.testing.assert_allclose(np.array(top), references[0.01], rtol=1e-6)
    np.testing.assert_allclose(np.array(lower), references[0.0025], rtol=1e-6)
    assert not np.allclose(references[0.01], references[0.0025], rtol=0.1)


def test_adamw_weight_decay_scales_with_the_multiplier() -> None:
    # A zero gradient makes Adam's own step zero: only the decoupled decay moves the weights.
    top, lower = keras.Variable(np.ones(2, "float32"), name="top"), keras.Variable(np.ones(2, "float32"), name="lower")
    optimizer = _make(
        "adamw", learning_rate=0.5, options={"weight_decay": 0.25}, variable_multipliers={lower.path: 0.5}
    )
    optimizer.apply([np.zeros(2, "float32")] * 2, [top, lower])
    np.testing.assert_array_equal(np.array(top), [1 - 0.5 * 0.25] * 2)
    np.testing.assert_array_equal(np.array(lower), [1 - 0.5 * 0.25 * 0.5] * 2)
    assert optimizer.weight_decay == 0.25


def test_multipliers_of_all_one_give_the_plain_optimizer() -> None:
    optimizer = _make("adam", learning_rate=0.1, variable_multipliers={"dense/kernel": 1.0})
    assert type(optimizer) is keras.optimizers.Adam


def _dense_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="lower")(inputs)
    outputs = keras.layers.Dense(2, name="upper")(hidden)
    return keras.Model(inputs, outputs)


X = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
Y = np.random.default_rng(1).normal(size=(16, 2)).astype("float32")


@pytest.mark.parametrize(("name", "jit_compile"), [("sgd", False), ("adam", True)])
def test_fit_matches_a_plain_optimizer_at_the_multiplied_rate(name: str, jit_compile: bool) -> None:
    """Through compile and fit (a traced train step, XLA too), each layer moves as if trained at its own LR."""
    layerwise = _dense_model()
    multipliers = variable_multipliers(layerwise, {"lower": 0.25})
    assert multipliers == {"lower/kernel": 0.25, "lower/bias": 0.25}
    layerwise.compile(
        _make(name, learning_rate=0.1, variable_multipliers=multipliers), loss="mse", jit_compile=jit_compile
    )
    layerwise.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    # One step: the upper layer moves as at LR 0.1, the lower as at 0.025, from the same gradients.
    for learning_rate, layer in ((0.1, "upper"), (0.025, "lower")):
        plain = _dense_model()
        plain.compile(_make(name, learning_rate=learning_rate), loss="mse", jit_compile=jit_compile)
        plain.fit(X, Y, batch_size=16, epochs=1, verbose=0)
        for trained, reference in zip(
            layerwise.get_layer(layer).get_weights(), plain.get_layer(layer).get_weights(), strict=True
        ):
            np.testing.assert_allclose(trained, reference, rtol=1e-6, atol=1e-7)


@pytest.fixture
def mixed_float16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.usefixtures("mixed_float16")
def test_mixed_precision_fit_under_keras_loss_scale_optimizer() -> None:
    """Keras wraps the layer-wise optimiser in a LossScaleOptimizer under mixed_float16; it builds and steps."""
    trained = {}
    for learning_rate, multipliers in ((0.1, {"lower": 0.25}), (0.025, {})):
        model = _dense_model()
        before = model.get_layer("lower").get_weights()[0]
        optimizer = _make(
            "sgd", learning_rate=learning_rate, variable_multipliers=variable_multipliers(model, multipliers)
        )
        assert type(optimizer).__name__ == ("LayerwiseSGD" if multipliers else "SGD")
        model.compile(optimizer, loss="mse")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert model.optimizer.inner_optimizer is optimizer
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
        assert model.get_layer("lower").compute_dtype == "float16"
        assert int(optimizer.iterations) == 1
        trained[learning_rate] = model.get_layer("lower").get_weights()[0]
        assert np.abs(trained[learning_rate] - before).min() > 1e-5
    # The same float16 gradients: the layer-wise lower layer moved exactly as under plain SGD at 0.025.
    np.testing.assert_allclose(trained[0.1], trained[0.025], rtol=1e-6)


def test_loss_scale_wrapper_and_schedule() -> None:
    variable = keras.Variable(np.zeros(3, "float32"), name="v")
    schedule = keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=1, decay_rate=0.5)
    inner = _make("sgd", learning_rate=schedule, variable_multipliers={variable.path: 0.5})
    wrapped = keras.optimizers.LossScaleOptimizer(inner, initial_scale=4.0)
    # Step t runs at 0.5 * 0.5**t, times the multiplier; the optimiser's LR is the schedule's.
    wrapped.apply([GRADIENT * 4.0], [variable])
    np.testing.assert_array_equal(np.array(variable), -0.5 * 0.5 * GRADIENT)
    assert float(wrapped.learning_rate) == 0.25
    wrapped.apply([GRADIENT * 4.0], [variable])
    np.testing.assert_array_equal(np.array(variable), -(0.5 + 0.25) * 0.5 * GRADIENT)


def test_block_multipliers_decay_from_the_top() -> None:
    blocks = [("top_conv", "top_bn"), ("block7a",), ("block6a",), ("stem",)]
    assert block_multipliers(blocks, trainable_blocks=3, decay_per_block=DECAY) == {
        "top_conv": 1 / DECAY,
        "top_bn": 1 / DECAY,
        "block7a": 1 / DECAY**2,
        "block6a": 1 / DECAY**3,
    }
    assert block_multipliers(blocks, trainable_blocks=2, decay_per_block=1.0) == {
        "top_conv": 1.0,
        "top_bn": 1.0,
        "block7a": 1.0,
    }
    assert block_multipliers(blocks, trainable_blocks=0, decay_per_block=DECAY) == {}


def test_backbone_blocks_map_to_their_trainable_variables(tiny_backbone) -> None:
    backbone = tiny_backbone()
    backbone.model.get_layer("stem_conv").trainable = False
    backbone.model.get_layer("block1a_bn").trainable = False
    layers = block_multipliers(
        [group.layer_names for group in backbone.blocks_top_down], trainable_blocks=3, decay_per_block=2.0
    )
    # BN moving statistics are not trainable; the frozen layers' variables are left out; activations have none.
    assert variable_multipliers(backbone.model, layers) == {
        "top_conv/kernel": 0.5,
        "top_bn/gamma": 0.5,
        "top_bn/beta": 0.5,
        "block2a_conv/kernel": 0.25,
        "block2a_bn/gamma": 0.25,
        "block2a_bn/beta": 0.25,
        "block1a_conv/kernel": 0.125,
    }


def test_layers_of_nested_models_are_found() -> None:
    inner = _dense_model()
    inputs = keras.Input((4,))
    outer = keras.Model(inputs, keras.layers.Dense(1, name="head")(inner(inputs)))
    assert variable_multipliers(outer, {"lower": 0.5, "head": 1.0}) == {
        "lower/kernel": 0.5,
        "lower/bias": 0.5,
        "head/kernel": 1.0,
        "head/bias": 1.0,
    }


def test_an_unknown_layer_name_is_refused() -> None:
    model = _dense_model()
    with pytest.raises(ValueError, match=r"layer_multipliers names layers that model '.*' does not have: top_conv;"):
        variable_multipliers(model, {"top_conv": 0.5, "lower": 0.5})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"trainable_blocks": 1, "decay_per_block": 0.5}, r"decay_per_block is 0.5; it must be >= 1"),
        ({"trainable_blocks": 3, "decay_per_block": 2.0}, r"trainable_blocks is 3; it must be in \[0, 2\]"),
        ({"trainable_blocks": -1, "decay_per_block": 2.0}, r"trainable_blocks is -1; it must be in \[0, 2\]"),
    ],
)
def test_block_multiplier_arguments_are_checked(arguments, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        block_multipliers([("a",), ("b",)], **arguments)


def test_a_path_the_optimizer_does_not_train_is_refused_at_build() -> None:
    variable = keras.Variable(np.zeros(1, "float32"), name="v")
    optimizer = _make("adam", learning_rate=0.1, variable_multipliers={"top_conv/kernel": 0.5})
    with pytest.raises(
        ValueError,
        match="variable_multipliers names variables that LayerwiseAdam does not train: top_conv/kernel; "
        "it trains 1 variables",
    ):
        optimizer.build([variable])


def test_a_path_shared_by_two_variables_is_refused_at_build() -> None:
    first, second = keras.Variable(np.zeros(1, "float32"), name="v"), keras.Variable(np.zeros(1, "float32"), name="v")
    optimizer = _make("sgd", learning_rate=0.1, variable_multipliers={"v": 0.5})
    with pytest.raises(
        ValueError, match="variable_multipliers is ambiguous: several trained variables have the path v"
    ):
        optimizer.build([first, second])


def test_layerwise_classes_are_made_once_and_keep_their_config() -> None:
    assert layerwise_class(keras.optimizers.Adam) is layerwise_class(keras.optimizers.Adam)
    optimizer = _make("adam", learning_rate=0.1, options={"beta_1": 0.8}, variable_multipliers={"x": 0.5})
    config = keras.optimizers.serialize(optimizer)
    assert config["registered_name"] == "pipeline.layerwise>LayerwiseAdam"
    restored = keras.optimizers.deserialize(config)
    assert type(restored) is type(optimizer)
    assert (restored.variable_multipliers, restored.beta_1) == ({"x": 0.5}, 0.8)


def test_a_compiled_model_saves_and_loads_with_its_optimizer(tmp_path) -> None:
    model = _dense_model()
    model.compile(_make("adam", learning_rate=0.1, variable_multipliers={"lower/kernel": 0.25}), loss="mse")
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", custom_objects=custom_objects())
    assert type(loaded.optimizer) is layerwise_class(keras.optimizers.Adam)
    assert (loaded.optimizer.variable_multipliers, int(loaded.optimizer.iterations)) == ({"lower/kernel": 0.25}, 2)
    # Its moments came back too: the next step is the one the original takes.
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    loaded.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    np.testing.assert_array_equal(loaded.get_layer("lower").get_weights()[0], model.get_layer("lower").get_weights()[0])

"""The course's diagnostics, each case built: vanishing, exploding, dead ReLUs; and the recipe's wiring."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.model.head import build_head
from pipeline.optim.gradient_norms import variable_blocks
from pipeline.params.diagnostics import DiagnosticsParams
from pipeline.params.head import HeadParams
from pipeline.params.optimizer import AdamParams
from pipeline.params.schedule import ConstantParams
from pipeline.training.diagnostics import DiagnosticFlag, TrainingDiagnostics, dead_fraction
from pipeline.training.recipe import Phase
from tests.conftest import build_tiny_backbone, fine_tune_tiny


def _data(count: int = 64, features: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = rng.uniform(0, 1, (count, features)).astype("float32")
    return inputs, (inputs[:, 0] > inputs[:, 1]).astype("int64")


def _fit(
    model: keras.Model,
    diagnostics: TrainingDiagnostics,
    optimizer: keras.optimizers.Optimizer | None,
    epochs: int,
    blocks: dict[str, tuple[str, ...]],
) -> list[dict[str, float]]:
    """Fits with the diagnostics' optimiser variant and callbacks, as `fine_tune` does; returns each epoch's logs."""
    from pipeline.optim.gradient_norms import gradient_norm_class

    inputs, labels = _data()
    config = optimizer.get_config()
    config.pop("name", None)
    measured = gradient_norm_class(type(optimizer))(**config, variable_blocks=variable_blocks(model, blocks))
    model.compile(optimizer=measured, loss="sparse_categorical_crossentropy", jit_compile=False)
    val = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(16)
    history = model.fit(
        inputs,
        labels,
        batch_size=16,
        epochs=epochs,
        validation_data=val,
        callbacks=diagnostics.callbacks(model, val),
        shuffle=False,
        verbose=0,
    )
    return [{key: values[epoch] for key, values in history.history.items()} for epoch in range(epochs)]


def _quiet(**settings) -> TrainingDiagnostics:
    lines: list[str] = []
    diagnostics = TrainingDiagnostics(DiagnosticsParams(**settings), print_line=lines.append)
    diagnostics.lines = lines  # type: ignore[attr-defined]
    return diagnostics


def test_a_deep_sigmoid_stack_with_a_poor_initialisation_vanishes_at_epoch_1() -> None:
    keras.utils.set_random_seed(0)
    tensor = inputs = keras.Input((8,))
    for index in range(8):
        small = keras.initializers.RandomNormal(stddev=0.05, seed=index)
        tensor = keras.layers.Dense(16, activation="sigmoid", kernel_initializer=small, name=f"layer_{index}")(tensor)
    outputs = keras.layers.Dense(2, activation="softmax", name="head_predictions")(tensor)
    blocks = {f"layer_{index}": (f"layer_{index}",) for index in range(8)}
    diagnostics = _quiet()
    logs = _fit(keras.Model(inputs, outputs), diagnostics, keras.optimizers.SGD(0.1), 2, blocks)
    flag = diagnostics.flags["vanishing_gradients"]
    assert (flag.epoch, "exploding_gradients" in diagnostics.flags) == (0, False)
    assert logs[0]["grad_norm_ratio"] < 1e-5
    assert logs[0]["grad_norm/layer_0"] == min(logs[0][f"grad_norm/{block}"] for block in [*blocks, "head"])
    assert flag.detail == f"ratio {logs[0]['grad_norm_ratio']:.2g} < 1e-05, lowest layer_0"
    assert diagnostics.tags() == {"diagnostics.vanishing_gradients": f"epoch 1 ({flag.detail})"}
    assert diagnostics.lines == [  # type: ignore[attr-defined]
        f"diagnostics: vanishing gradients at epoch 1 ({flag.detail}); try He initialisation "
        "(head.initializer: auto or he_normal) with a non-saturating activation (relu, leaky_relu), or BatchNorm"
    ]


def test_the_same_stack_with_he_initialisation_and_relu_does_not_vanish() -> None:
    keras.utils.set_random_seed(0)
    tensor = inputs = keras.Input((8,))
    for index in range(8):
        he = keras.initializers.HeNormal(seed=index)
        tensor = keras.layers.Dense(16, activation="relu", kernel_initializer=he, name=f"layer_{index}")(tensor)
    outputs = keras.layers.Dense(2, activation="softmax", name="head_predictions")(tensor)
    blocks = {f"layer_{index}": (f"layer_{index}",) for index in range(8)}
    diagnostics = _quiet()
    logs = _fit(keras.Model(inputs, outputs), diagnostics, keras.optimizers.SGD(0.1), 2, blocks)
    assert diagnostics.flags == {}
    assert logs[1]["grad_norm_ratio"] > 1e-2


def _relu_stack() -> keras.Model:
    keras.utils.set_random_seed(1)
    tensor = inputs = keras.Input((8,))
    for index in range(4):
        tensor = keras.layers.Dense(32, activation="relu", name=f"layer_{index}")(tensor)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head_predictions")(tensor))


def test_a_huge_lr_without_clipping_explodes_at_epoch_1() -> None:
    blocks = {f"layer_{index}": (f"layer_{index}",) for index in range(4)}
    diagnostics = _quiet()
    _fit(_relu_stack(), diagnostics, keras.optimizers.SGD(50.0), 2, blocks)
    flag = diagnostics.flags["exploding_gradients"]
    assert (flag.epoch, flag.detail) == (0, "layer_0 norm 3.65e+10 > 1000")
    assert diagnostics.tags()["diagnostics.exploding_gradients"] == f"epoch 1 ({flag.detail})"


def test_a_small_lr_on_the_same_stack_is_not_flagged() -> None:
    blocks = {f"layer_{index}": (f"layer_{index}",) for index in range(4)}
    small = _quiet()
    logs = _fit(_relu_stack(), small, keras.optimizers.SGD(0.01), 2, blocks)
    assert small.flags == {}
    assert 0 < logs[1]["grad_norm/head"] < 1000


def _dead_relu_head(dead_units: int) -> keras.Model:
    inputs = keras.Input((8,))
    dense = keras.layers.Dense(8, name="head_dense_1")
    tensor = keras.layers.Activation("relu", name="head_activation_1")(dense(inputs))
    outputs = keras.layers.Dense(2, activation="softmax", name="head_predictions")(tensor)
    model = keras.Model(inputs, outputs)
    # Inputs in [0, 1] and a positive kernel: a unit is alive unless its bias is far below 0.
    bias = np.zeros(8, np.float32)
    bias[:dead_units] = -1000.0
    dense.set_weights([np.full((8, 8), 0.1, np.float32), bias])
    return model


def test_a_relu_layer_with_a_large_negative_bias_gives_the_exact_dead_fraction() -> None:
    diagnostics = _quiet(dead_relu_fraction=0.3)
    logs = _fit(_dead_relu_head(3), diagnostics, keras.optimizers.SGD(0.01), 2, {})
    assert [epoch["dead_relu_fraction"] for epoch in logs] == [0.375, 0.375]
    assert diagnostics.flags["dead_relus"] == DiagnosticFlag(
        "dead_relus", 0, "0.375 of the head's ReLU units dead > 0.3"
    )
    assert diagnostics.lines[0].endswith("try LeakyReLU (head.activation: leaky_relu), or a lower LR")  # type: ignore[attr-defined]


def test_below_the_threshold_dead_units_are_measured_but_not_flagged() -> None:
    diagnostics = _quiet()
    logs = _fit(_dead_relu_head(2), diagnostics, keras.optimizers.SGD(0.01), 1, {})
    assert (logs[0]["dead_relu_fraction"], diagnostics.flags) == (0.25, {})


def test_dead_fraction_counts_a_unit_dead_only_if_zero_on_every_example_and_position() -> None:
    maps = np.zeros((2, 3, 3, 4), np.float32)
    maps[1, 2, 0, 1] = 0.5  # unit 1 alive at one position of one image
    assert dead_fraction([maps, np.array([[0.0, 1.0], [0.0, 0.0]])]) == 4 / 6


def test_switched_off_there_are_no_callbacks_and_no_blocks() -> None:
    diagnostics = TrainingDiagnostics(DiagnosticsParams(gradient_norms=False, dead_relus=False))
    model = _dead_relu_head(0)
    assert diagnostics.variable_blocks(model, []) is None
    assert diagnostics.callbacks(model, tf.data.Dataset.from_tensor_slices(_data()).batch(4)) == []


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0])
def test_fine_tune_logs_block_norms_with_and_without_the_feature_cache(cache_bytes: int) -> None:
    backbone = build_tiny_backbone(16, seed=0)
    classifier = build_head(backbone, HeadParams(hidden_units=[8]), num_classes=3, seed=0)
    adam, constant = AdamParams(name="adam"), ConstantParams(name="constant")
    phases = [Phase("frozen", 0, 1, 1e-3, adam, constant), Phase("unfreeze_top_1", 1, 1, 1e-4, adam, constant)]
    diagnostics = _quiet()
    history = fine_tune_tiny(
        classifier, phases, image_size=16, cache_bytes=cache_bytes, diagnostics=diagnostics, jit_compile="auto"
    )
    top = backbone.blocks_top_down[0].name
    norms = [sorted(key for key in row if key.startswith("grad_norm")) for row in history.rows]
    assert norms == [["grad_norm/head"], ["grad_norm/head", f"grad_norm/{top}", "grad_norm_ratio"]]
    assert all(0 <= row["dead_relu_fraction"] <= 1 for row in history.rows)
    assert history.phases[1].cached_features is (cache_bytes > 0)

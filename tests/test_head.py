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


# The course's techniques in the head: each switch changes the model that is built and trained.


def _head(tiny_backbone, **options):
    options.setdefault("num_classes", 3)
    options.setdefault("seed", 0)
    return attach_head(tiny_backbone(), **options).model


def _head_layers(model) -> list[str]:
    names = [layer.name for layer in model.layers]
    return names[names.index(HEAD_POOL) :]


INITIALIZER_CLASSES = {"he_normal": "HeNormal", "lecun_normal": "LecunNormal", "glorot_uniform": "GlorotUniform"}


@pytest.mark.parametrize(
    ("activation", "initializer"),
    [
        ("relu", "he_normal"),
        ("elu", "he_normal"),
        ("gelu", "he_normal"),
        ("maxout", "he_normal"),
        ("selu", "lecun_normal"),
        ("tanh", "glorot_uniform"),
        ("sigmoid", "glorot_uniform"),
    ],
)
def test_auto_initializer_is_built_into_the_hidden_layer(tiny_backbone, activation: str, initializer: str) -> None:
    model = _head(tiny_backbone, hidden_units=[8], activation=activation)
    built = model.get_layer("head_dense_1").kernel_initializer
    assert type(built).__name__ == INITIALIZER_CLASSES[initializer]
    assert built.seed == 1
    # The output layer feeds a softmax: Glorot whatever the hidden activation.
    assert type(model.get_layer(HEAD_PREDICTIONS).kernel_initializer).__name__ == "GlorotUniform"


def test_explicit_initializer_is_used(tiny_backbone) -> None:
    model = _head(tiny_backbone, hidden_units=[8], activation="relu", initializer="orthogonal")
    assert type(model.get_layer("head_dense_1").kernel_initializer).__name__ == "Orthogonal"
    zeros = _head(tiny_backbone, hidden_units=[8], initializer="zeros")
    assert not np.any(zeros.get_layer("head_dense_1").get_weights()[0])


@pytest.mark.parametrize(
    ("batch_norm", "expected"),
    [
        ("none", [HEAD_POOL, HEAD_DROPOUT, "head_dense_1", "head_activation_1", "head_dropout_1", HEAD_PREDICTIONS]),
        (
            "before",
            [
                HEAD_POOL,
                HEAD_DROPOUT,
                "head_dense_1",
                "head_bn_1",
                "head_activation_1",
                "head_dropout_1",
                HEAD_PREDICTIONS,
            ],
        ),
        (
            "after",
            [
                HEAD_POOL,
                HEAD_DROPOUT,
                "head_dense_1",
                "head_activation_1",
                "head_bn_1",
                "head_dropout_1",
                HEAD_PREDICTIONS,
            ],
        ),
    ],
)
def test_batch_norm_sits_where_it_was_asked(tiny_backbone, batch_norm: str, expected: list[str]) -> None:
    model = _head(tiny_backbone, hidden_units=[8], batch_norm=batch_norm, hidden_dropout=0.1, dropout=0.2)
    assert _head_layers(model) == expected
    # BN's beta replaces the bias of the Dense before it.
    assert model.get_layer("head_dense_1").use_bias is (batch_norm != "before")


def test_several_hidden_layers_with_their_own_dropout(tiny_backbone) -> None:
    model = _head(tiny_backbone, hidden_units=[16, 8], hidden_dropout=[0.0, 0.3])
    assert _head_layers(model) == [
        HEAD_POOL,
        HEAD_DROPOUT,
        "head_dense_1",
        "head_activation_1",
        "head_dense_2",
        "head_activation_2",
        "head_dropout_2",
        HEAD_PREDICTIONS,
    ]
    assert model.get_layer("head_dense_2").units == 8
    assert model.get_layer("head_dropout_2").rate == 0.3


def _activation_output(tiny_backbone, activation: str, inputs: np.ndarray, **options) -> np.ndarray:
    model = _head(tiny_backbone, hidden_units=[4], activation=activation, **options)
    layer = model.get_layer("head_activation_1")
    return keras.ops.convert_to_numpy(layer(inputs))


def test_activations_compute_what_they_are_named(tiny_backbone) -> None:
    values = np.array([[-2.0, -0.5, 0.5, 2.0]], dtype="float32")
    np.testing.assert_allclose(_activation_output(tiny_backbone, "relu", values), [[0, 0, 0.5, 2]])
    leaky = _activation_output(tiny_backbone, "leaky_relu", values, negative_slope=0.1)
    np.testing.assert_allclose(leaky, [[-0.2, -0.05, 0.5, 2]], rtol=1e-6)
    np.testing.assert_allclose(
        _activation_output(tiny_backbone, "elu", values),
        [np.where(values[0] > 0, values[0], np.expm1(values[0]))],
        rtol=1e-6,
    )
    selu = 1.0507009873554805 * np.where(values[0] > 0, values[0], 1.6732632423543772 * np.expm1(values[0]))
    np.testing.assert_allclose(_activation_output(tiny_backbone, "selu", values), [selu], rtol=1e-6)
    np.testing.assert_allclose(_activation_output(tiny_backbone, "tanh", values), np.tanh(values), rtol=1e-6)
    np.testing.assert_allclose(
        _activation_output(tiny_backbone, "sigmoid", values), 1 / (1 + np.exp(-values)), rtol=1e-6
    )
    np.testing.assert_allclose(
        _activation_output(tiny_backbone, "swish", values), values / (1 + np.exp(-values)), rtol=1e-6
    )
    model = _head(tiny_backbone, hidden_units=[4], activation="prelu")
    assert isinstance(model.get_layer("head_activation_1"), keras.layers.PReLU)
    gelu = _head(tiny_backbone, hidden_units=[4], activation="gelu").get_layer("head_activation_1")
    assert gelu.get_config()["activation"] == "gelu"


def test_maxout_takes_the_max_of_each_units_pieces(tiny_backbone) -> None:
    model = _head(tiny_backbone, hidden_units=[2], activation="maxout", maxout_pieces=3)
    dense = model.get_layer("head_dense_1")
    assert dense.units == 6
    pooled = np.random.default_rng(0).normal(size=(5, 16)).astype("float32")
    kernel, bias = dense.get_weights()
    linear = pooled @ kernel + bias
    hidden = keras.Model(model.get_layer(HEAD_DROPOUT).output, model.get_layer("head_activation_1").output)
    np.testing.assert_allclose(hidden.predict(pooled, verbose=0), linear.reshape(5, 2, 3).max(axis=2), rtol=1e-5)


def test_selu_gets_alpha_dropout(tiny_backbone) -> None:
    model = _head(tiny_backbone, hidden_units=[8], activation="selu", dropout=0.1, hidden_dropout=0.1)
    assert isinstance(model.get_layer(HEAD_DROPOUT), keras.layers.AlphaDropout)
    assert isinstance(model.get_layer("head_dropout_1"), keras.layers.AlphaDropout)
    relu = _head(tiny_backbone, hidden_units=[8], dropout=0.1, hidden_dropout=0.1)
    assert type(relu.get_layer("head_dropout_1")) is keras.layers.Dropout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"activation": "selu", "batch_norm": "before"}, "head.activation selu with head.batch_norm before"),
        ({"activation": "selu", "dropout_type": "standard", "dropout": 0.2}, "plain dropout shifts the mean"),
        ({"hidden_units": [8, 4], "hidden_dropout": [0.1]}, "hidden_dropout lists 1 rates for 2 hidden layers"),
        ({"activation": "mish"}, "unknown activation 'mish'; allowed: relu, leaky_relu"),
        ({"batch_norm": "inside"}, "unknown batch_norm 'inside'; allowed: none, before, after"),
    ],
)
def test_refusals_name_the_reason(tiny_backbone, options, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _head(tiny_backbone, **options)


def _tiny_data():
    images = np.random.default_rng(0).uniform(-1, 1, (32, 16, 16, 3)).astype("float32")
    return images, np.arange(32) % 3


def test_max_norm_bounds_every_kernel_column_after_training(tiny_backbone) -> None:
    images, labels = _tiny_data()
    norms = {}
    for bound in (None, 0.5):
        model = _head(tiny_backbone, hidden_units=[16], max_norm=bound)
        model.compile(keras.optimizers.SGD(5.0), loss="sparse_categorical_crossentropy")
        model.fit(images, labels, batch_size=8, epochs=3, verbose=0)
        norms[bound] = [
            np.linalg.norm(model.get_layer(name).get_weights()[0], axis=0)
            for name in ("head_dense_1", HEAD_PREDICTIONS)
        ]
    assert all(column_norms.max() <= 0.5 + 1e-6 for column_norms in norms[0.5])
    assert max(column_norms.max() for column_norms in norms[None]) > 0.5


@pytest.mark.parametrize(("l1", "l2"), [(0.0, 0.01), (0.001, 0.0), (0.001, 0.01)])
def test_weight_penalty_is_in_the_loss(tiny_backbone, l1: float, l2: float) -> None:
    images, labels = _tiny_data()
    plain = _head(tiny_backbone, hidden_units=[8])
    penalised = _head(tiny_backbone, hidden_units=[8], l1=l1, l2=l2)
    penalised.set_weights(plain.get_weights())
    losses = []
    for model in (plain, penalised):
        model.compile(loss="sparse_categorical_crossentropy")
        losses.append(model.evaluate(images, labels, batch_size=32, verbose=0))
    kernels = [penalised.get_layer(name).get_weights()[0] for name in ("head_dense_1", HEAD_PREDICTIONS)]
    penalty = sum(l1 * np.abs(kernel).sum() + l2 * np.square(kernel).sum() for kernel in kernels)
    assert losses[1] - losses[0] == pytest.approx(penalty, rel=1e-4)
    assert penalty > 0


def test_full_head_saves_and_reloads_in_safe_mode(tiny_backbone, tmp_path) -> None:
    model = _head(
        tiny_backbone,
        hidden_units=[6, 4],
        activation="maxout",
        batch_norm="after",
        hidden_dropout=0.1,
        dropout=0.1,
        l2=0.01,
        max_norm=2.0,
    )
    path = tmp_path / "head.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    images, _ = _tiny_data()
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6)

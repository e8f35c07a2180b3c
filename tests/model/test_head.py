"""The new head: pooling, dropout, hidden layers with the course's techniques, and a float32 softmax."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.backbones.base import Backbone
from pipeline.model.head import HEAD_DROPOUT, HEAD_POOL, HEAD_PREDICTIONS, build_head
from pipeline.params.head import HeadParams
from tests.conftest import build_tiny_backbone


@pytest.fixture(scope="module")
def calibrated_backbone() -> Backbone:
    return build_tiny_backbone()


@pytest.fixture
def tiny_backbone(calibrated_backbone: Backbone):
    """Overrides conftest's fixture: fresh copies of one calibrated backbone.

    Why: calibrating BatchNorm costs four `predict` calls per build and this file builds about fifty
    heads; a clone with the weights copied is the same backbone at a fraction of the cost.
    """

    def build() -> Backbone:
        model = keras.models.clone_model(calibrated_backbone.model)
        model.set_weights(calibrated_backbone.model.get_weights())
        return Backbone(
            name=calibrated_backbone.name,
            model=model,
            blocks_top_down=calibrated_backbone.blocks_top_down,
            make_preprocessing=calibrated_backbone.make_preprocessing,
        )

    return build


@pytest.mark.parametrize(("pooling", "layer_type"), [("avg", "GlobalAveragePooling2D"), ("max", "GlobalMaxPooling2D")])
def test_head_replaces_the_classifier(tiny_backbone, pooling: str, layer_type: str) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling=pooling, dropout=0.3), num_classes=5, seed=0)
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
        classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert classifier.model.get_layer(HEAD_PREDICTIONS).dtype_policy.compute_dtype == "float32"


def test_same_seed_same_head_weights(tiny_backbone) -> None:
    first = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=3)
    second = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=3)
    for left, right in zip(
        first.model.get_layer(HEAD_PREDICTIONS).get_weights(),
        second.model.get_layer(HEAD_PREDICTIONS).get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(left, right)


def _vector_backbone(rank: int) -> Backbone:
    """A backbone ending in a feature vector (rank 2) or in a rank-3 sequence."""
    inputs = keras.Input((16, 16, 3))
    tensor = keras.layers.Conv2D(4, 3, name="stem_conv")(inputs)
    tensor = keras.layers.GlobalAveragePooling2D(name="top_pool")(tensor)
    if rank == 3:
        tensor = keras.layers.Reshape((2, 2), name="top_reshape")(tensor)
    model = keras.Model(inputs, tensor, name="vector")
    return Backbone(name="vector", model=model, blocks_top_down=(), make_preprocessing=keras.layers.Identity)


def test_a_feature_vector_goes_to_the_head_unpooled() -> None:
    backbone = _vector_backbone(rank=2)
    classifier = build_head(backbone, HeadParams(pooling="max", dropout=0.0), num_classes=3, seed=0)
    assert type(classifier.model.get_layer(HEAD_POOL)).__name__ == "Identity"
    images = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 3)).astype("float32")
    features = backbone.model.predict(images, verbose=0)
    pooled = keras.Model(classifier.model.input, classifier.pooled).predict(images, verbose=0)
    np.testing.assert_array_equal(pooled, features)


def test_features_of_another_rank_are_refused() -> None:
    with pytest.raises(ValueError, match=r"vector outputs features of shape \(None, 2, 2\); the head takes"):
        build_head(_vector_backbone(rank=3), HeadParams(dropout=0.0), num_classes=3, seed=0)


def test_fewer_than_two_classes_are_refused(tiny_backbone) -> None:
    with pytest.raises(ValueError, match="A classifier needs at least 2 classes. Received: num_classes=1"):
        build_head(tiny_backbone(), HeadParams(dropout=0.0), num_classes=1, seed=0)


# The course's techniques in the head: each switch changes the model that is built and trained.


def _head(tiny_backbone, *, num_classes: int = 3, seed: int = 0, **options):
    """The model of a head built from `options` (no dropout unless asked) on the tiny backbone."""
    head = HeadParams(**{"dropout": 0.0, **options})
    return build_head(tiny_backbone(), head, num_classes=num_classes, seed=seed).model


def _head_layers(model) -> list[str]:
    names = [layer.name for layer in model.layers]
    return names[names.index(HEAD_POOL) :]


# Keras' subclasses leave scale/mode/distribution out of get_config(); they are attributes of VarianceScaling.
INITIALIZER_SETTINGS = {
    "he_normal": ("HeNormal", 2.0, "fan_in", "truncated_normal"),
    "lecun_normal": ("LecunNormal", 1.0, "fan_in", "truncated_normal"),
    "glorot_uniform": ("GlorotUniform", 1.0, "fan_avg", "uniform"),
    "he_uniform": ("HeUniform", 2.0, "fan_in", "uniform"),
}


def _settings(initializer) -> tuple:
    return type(initializer).__name__, initializer.scale, initializer.mode, initializer.distribution


@pytest.mark.parametrize(
    ("activation", "initializer"),
    [
        ("relu", "he_normal"),
        ("leaky_relu", "he_normal"),
        ("elu", "he_normal"),
        ("prelu", "he_normal"),
        ("gelu", "he_normal"),
        ("swish", "he_normal"),
        ("maxout", "he_normal"),
        ("selu", "lecun_normal"),
        ("tanh", "glorot_uniform"),
        ("sigmoid", "glorot_uniform"),
    ],
)
def test_auto_initializer_is_built_into_the_hidden_layer(tiny_backbone, activation: str, initializer: str) -> None:
    model = _head(tiny_backbone, hidden_units=[8], activation=activation)
    built = model.get_layer("head_dense_1").kernel_initializer
    assert _settings(built) == INITIALIZER_SETTINGS[initializer]
    assert built.seed == 1
    # The output layer feeds a softmax: Glorot whatever the hidden activation.
    assert _settings(model.get_layer(HEAD_PREDICTIONS).kernel_initializer) == INITIALIZER_SETTINGS["glorot_uniform"]


def test_explicit_initializer_is_used(tiny_backbone) -> None:
    model = _head(tiny_backbone, hidden_units=[8], activation="relu", initializer="orthogonal")
    assert type(model.get_layer("head_dense_1").kernel_initializer).__name__ == "Orthogonal"
    # An explicit name wins over the match: SELU's would be lecun_normal.
    selu = _head(tiny_backbone, hidden_units=[8], activation="selu", initializer="he_uniform")
    assert _settings(selu.get_layer("head_dense_1").kernel_initializer) == INITIALIZER_SETTINGS["he_uniform"]
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


def test_each_hidden_layer_draws_its_own_weights_from_the_seed(tiny_backbone) -> None:
    first = build_head(tiny_backbone(), HeadParams(dropout=0.0, hidden_units=[16, 16]), num_classes=3, seed=5)
    second = build_head(tiny_backbone(), HeadParams(dropout=0.0, hidden_units=[16, 16]), num_classes=3, seed=5)
    kernels = [first.model.get_layer(f"head_dense_{index}").get_weights()[0] for index in (1, 2)]
    assert kernels[0].shape == kernels[1].shape == (16, 16)
    assert not np.allclose(kernels[0], kernels[1])
    np.testing.assert_array_equal(kernels[1], second.model.get_layer("head_dense_2").get_weights()[0])
    # The output layer starts exactly as in a head without hidden layers of the same seed.
    plain = build_head(tiny_backbone(), HeadParams(dropout=0.0, hidden_units=[16]), num_classes=3, seed=5)
    np.testing.assert_array_equal(
        plain.model.get_layer(HEAD_PREDICTIONS).get_weights()[0],
        first.model.get_layer(HEAD_PREDICTIONS).get_weights()[0],
    )
    # The feature cache starts the head at `pooled`: still the pooling output, before any head weight.
    assert first.pooled is first.model.get_layer(HEAD_POOL).output


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
    gelu = values * 0.5 * (1 + np.vectorize(math.erf)(values / math.sqrt(2)))  # the exact form, not tanh's
    np.testing.assert_allclose(_activation_output(tiny_backbone, "gelu", values), gelu, rtol=1e-6)
    # PReLU learns its slope, initially 0: it starts as a ReLU.
    np.testing.assert_allclose(_activation_output(tiny_backbone, "prelu", values), [[0, 0, 0.5, 2]])


@pytest.mark.parametrize(
    ("activation", "layer_type"),
    [
        ("leaky_relu", keras.layers.LeakyReLU),
        ("prelu", keras.layers.PReLU),
        ("elu", keras.layers.ELU),
        ("relu", keras.layers.Activation),
        ("selu", keras.layers.Activation),
        ("gelu", keras.layers.Activation),
        ("swish", keras.layers.Activation),
        ("tanh", keras.layers.Activation),
        ("sigmoid", keras.layers.Activation),
        ("maxout", keras.layers.GlobalMaxPooling1D),
    ],
)
def test_each_activation_is_a_keras_layer(tiny_backbone, activation: str, layer_type: type) -> None:
    layer = _head(tiny_backbone, hidden_units=[4], activation=activation).get_layer("head_activation_1")
    assert type(layer) is layer_type


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


# Each option is checked once, by the head's params model, before any layer is built; the pairings the
# course warns against are refused with their reason.
@pytest.mark.parametrize(
    ("options", "where", "message"),
    [
        ({"activation": "selu", "batch_norm": "before"}, "", "head.activation selu with head.batch_norm before"),
        ({"activation": "selu", "dropout_type": "standard", "dropout": 0.2}, "", "plain dropout shifts the mean"),
        ({"hidden_units": [8, 4], "hidden_dropout": [0.1]}, "", "hidden_dropout lists 1 rates for 2 hidden layers"),
        ({"activation": "mish"}, "activation", "unknown activation; registered activations: relu, leaky_relu"),
        ({"batch_norm": "inside"}, "batch_norm", "Input should be 'none', 'before' or 'after'"),
        ({"dropout_type": "alpha", "dropout": 0.2}, "", "head.dropout_type alpha with head.activation relu"),
        ({"dropout_type": "gaussian"}, "dropout_type", "Input should be 'auto', 'standard' or 'alpha'"),
        ({"hidden_units": [8], "initializer": "he"}, "initializer", "unknown initializer; registered initializers"),
        ({"dropout": 1.0}, "dropout", "Input should be less than 1"),
        ({"hidden_units": [8, 0]}, "hidden_units.1", "Input should be greater than 0"),
        ({"negative_slope": 1.5}, "negative_slope", "Input should be less than 1"),
        ({"maxout_pieces": 1}, "maxout_pieces", "Input should be greater than or equal to 2"),
        ({"kernel_regularizer": {"l2": -0.01}}, "kernel_regularizer.l2", "Input should be greater than or equal to 0"),
        ({"max_norm": {"value": 0.0}}, "max_norm.value", "Input should be greater than 0"),
        ({"max_norm": {"value": 1.0, "axis": 2}}, "max_norm.axis", "Input should be 0 or 1"),
        ({"pooling": "median"}, "pooling", "Input should be 'avg' or 'max'"),
    ],
)
def test_refusals_name_the_key_and_the_reason(options, where: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        HeadParams(**{"dropout": 0.0, **options})
    (error,) = caught.value.errors()
    assert ".".join(map(str, error["loc"])) == where
    assert message in error["msg"]


def _tiny_data():
    images = np.random.default_rng(0).uniform(-1, 1, (32, 16, 16, 3)).astype("float32")
    return images, np.arange(32) % 3


def test_max_norm_bounds_every_kernel_column_after_training(tiny_backbone) -> None:
    images, labels = _tiny_data()
    kernels = {}
    for bound, axis in ((None, 0), (0.5, 0), (0.5, 1)):
        max_norm = None if bound is None else {"value": bound, "axis": axis}
        model = _head(tiny_backbone, hidden_units=[16], max_norm=max_norm)
        model.compile(keras.optimizers.SGD(5.0), loss="sparse_categorical_crossentropy")
        model.fit(images, labels, batch_size=8, epochs=3, verbose=0)
        kernels[bound] = kernels.get(bound, {}) | {
            axis: [model.get_layer(name).get_weights()[0] for name in ("head_dense_1", HEAD_PREDICTIONS)]
        }
    for axis in (0, 1):
        # Axis 0: each unit's incoming weights (a kernel column); axis 1: each input's outgoing ones (a row).
        assert all(np.linalg.norm(kernel, axis=axis).max() <= 0.5 + 1e-6 for kernel in kernels[0.5][axis])
        # Without the constraint the same training leaves norms over the bound, so the test can fail.
        assert max(np.linalg.norm(kernel, axis=axis).max() for kernel in kernels[None][0]) > 0.5


@pytest.mark.parametrize(("l1", "l2"), [(0.0, 0.01), (0.01, 0.0), (0.01, 0.01)])
def test_weight_penalty_is_in_the_loss(tiny_backbone, l1: float, l2: float) -> None:
    images, labels = _tiny_data()
    plain = _head(tiny_backbone, hidden_units=[8])
    penalised = _head(tiny_backbone, hidden_units=[8], kernel_regularizer={"l1": l1, "l2": l2})
    penalised.set_weights(plain.get_weights())
    losses = []
    for model in (plain, penalised):
        model.compile(loss="sparse_categorical_crossentropy")
        losses.append(model.evaluate(images, labels, batch_size=32, verbose=0))
    kernels = [penalised.get_layer(name).get_weights()[0] for name in ("head_dense_1", HEAD_PREDICTIONS)]
    # Only the kernels: biases and BN are not penalised (float64 sums; Keras adds float32 ones).
    penalty = sum(
        l1 * np.abs(kernel, dtype="float64").sum() + l2 * np.square(kernel, dtype="float64").sum() for kernel in kernels
    )
    assert losses[1] - losses[0] == pytest.approx(penalty, rel=1e-5)
    assert penalty > 0


def test_full_head_saves_and_reloads_in_safe_mode(tiny_backbone, tmp_path) -> None:
    model = _head(
        tiny_backbone,
        hidden_units=[6, 4],
        activation="maxout",
        batch_norm="after",
        hidden_dropout=0.1,
        dropout=0.1,
        kernel_regularizer={"l2": 0.01},
        max_norm={"value": 2.0},
    )
    path = tmp_path / "head.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    images, _ = _tiny_data()
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6)

"""The optimiser registry: each params model builds its Keras class with its own hyper-parameters, and clipping
that really clips."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest

from pipeline.optim.gradient_norms import gradient_norm_class
from pipeline.optim.layerwise import layerwise_class
from pipeline.optim.optimizers import OPTIMIZER_NAMES, custom_objects, make_optimizer, optimizer_class
from pipeline.params.optimizer import CLIPPING_KEYS, OPTIMIZER_MODELS
from tests.conftest import optimizer_settings as _settings

KERAS_CLASSES = {
    "sgd": "SGD",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "rmsprop": "RMSprop",
    "adam": "Adam",
    "adamw": "AdamW",
    "adamax": "Adamax",
    "nadam": "Nadam",
}


def _name(model) -> str:
    return model.model_fields["name"].annotation.__args__[0]


def test_the_params_models_are_the_registered_optimizers() -> None:
    assert tuple(_name(model) for model in OPTIMIZER_MODELS) == OPTIMIZER_NAMES == tuple(KERAS_CLASSES)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_each_name_builds_its_keras_optimizer(name: str) -> None:
    optimizer = make_optimizer(_settings(name), learning_rate=0.125)
    assert type(optimizer) is getattr(keras.optimizers, KERAS_CLASSES[name])
    assert float(optimizer.learning_rate) == 0.125


@pytest.mark.parametrize("model", OPTIMIZER_MODELS, ids=_name)
def test_params_models_match_keras_signatures_and_defaults(model) -> None:
    parameters = inspect.signature(getattr(keras.optimizers, KERAS_CLASSES[_name(model)]).__init__).parameters
    options = {key: field.default for key, field in model.model_fields.items() if key not in ("name", *CLIPPING_KEYS)}
    for option, default in options.items():
        assert option in parameters, option
        assert parameters[option].default == default, option
    for option in CLIPPING_KEYS:
        assert parameters[option].default is None
    assert model.momentum_term is None or model.momentum_term in options


@pytest.mark.parametrize(
    ("name", "options", "attributes"),
    [
        ("sgd", {"momentum": 0.9, "nesterov": True}, {"momentum": 0.9, "nesterov": True}),
        ("sgd", {"momentum": 0}, {"momentum": 0.0}),
        (
            "adagrad",
            {"initial_accumulator_value": 0.5, "epsilon": 1e-5},
            {"initial_accumulator_value": 0.5, "epsilon": 1e-5},
        ),
        ("adadelta", {"rho": 0.8}, {"rho": 0.8}),
        ("rmsprop", {"rho": 0.8, "momentum": 0.5, "centered": True}, {"rho": 0.8, "momentum": 0.5, "centered": True}),
        ("adam", {"beta_1": 0.8, "beta_2": 0.99, "amsgrad": True}, {"beta_1": 0.8, "beta_2": 0.99, "amsgrad": True}),
        ("adamw", {"weight_decay": 0.01, "beta_1": 0.7}, {"weight_decay": 0.01, "beta_1": 0.7}),
        ("adamax", {"beta_2": 0.9}, {"beta_2": 0.9}),
        ("nadam", {"beta_1": 0.85}, {"beta_1": 0.85}),
        ("adam", {"clipnorm": 1.5}, {"clipnorm": 1.5}),
    ],
)
def test_options_reach_the_optimizer(name: str, options, attributes) -> None:
    optimizer = make_optimizer(_settings(name, **options), learning_rate=0.1)
    for attribute, value in attributes.items():
        assert getattr(optimizer, attribute) == value, attribute
        assert type(getattr(optimizer, attribute)) is type(value), attribute


def test_clipnorm_bounds_each_variables_step() -> None:
    # A huge gradient, clipped to norm 2 per variable: the step is lr * 2 long, along the gradient.
    huge, small = keras.Variable(np.zeros(2, "float32")), keras.Variable(np.zeros(2, "float32"))
    optimizer = make_optimizer(_settings("sgd", clipnorm=2.0), learning_rate=0.1)
    optimizer.apply([np.array([300.0, 400.0], "float32"), np.array([0.3, 0.4], "float32")], [huge, small])
    np.testing.assert_allclose(np.array(huge), [-0.12, -0.16], rtol=1e-6)
    assert np.linalg.norm(np.array(huge)) == pytest.approx(0.1 * 2.0, rel=1e-6)
    # Clipping is per variable: a gradient under the bound is left alone.
    np.testing.assert_allclose(np.array(small), [-0.03, -0.04], rtol=1e-6)


def test_clipvalue_clips_each_element() -> None:
    variable = keras.Variable(np.zeros(3, "float32"))
    optimizer = make_optimizer(_settings("sgd", clipvalue=0.5), learning_rate=0.1)
    optimizer.apply([np.array([3.0, -0.2, -7.0], "float32")], [variable])
    np.testing.assert_allclose(np.array(variable), [-0.05, 0.02, 0.05], rtol=1e-6)


def test_global_clipnorm_bounds_the_joint_norm() -> None:
    # Each gradient alone is under the bound (norms 3 and 4); together (norm 5) they are scaled by 1/5.
    first, second = keras.Variable(np.zeros(1, "float32")), keras.Variable(np.zeros(1, "float32"))
    optimizer = make_optimizer(_settings("sgd", global_clipnorm=4.5), learning_rate=1.0)
    optimizer.apply([np.array([3.0], "float32"), np.array([4.0], "float32")], [first, second])
    np.testing.assert_allclose([float(first[0]), float(second[0])], [-2.7, -3.6], rtol=1e-6)


def test_optimizer_class_names_the_keras_class() -> None:
    assert optimizer_class("adamax") is keras.optimizers.Adamax
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'; registered: sgd, adagrad"):
        optimizer_class("lamb")


def test_every_call_builds_a_fresh_optimizer() -> None:
    settings = _settings("adam")
    assert make_optimizer(settings, learning_rate=0.1) is not make_optimizer(settings, learning_rate=0.1)


def test_only_the_clipping_that_is_set_reaches_keras() -> None:
    optimizer = make_optimizer(_settings("sgd", clipvalue=None, clipnorm=2.0), learning_rate=0.1)
    assert (optimizer.clipnorm, optimizer.clipvalue, optimizer.global_clipnorm) == (2.0, None, None)


def test_custom_objects_cover_every_optimizer() -> None:
    layerwise = {
        f"Layerwise{optimizer_class(name).__name__}": layerwise_class(optimizer_class(name)) for name in OPTIMIZER_NAMES
    }
    measured = {
        f"GradientNorms{variant.__name__}": gradient_norm_class(variant)
        for variant in (*(optimizer_class(name) for name in OPTIMIZER_NAMES), *layerwise.values())
    }
    assert custom_objects() == {**layerwise, **measured}
    assert len(custom_objects()) == 3 * len(OPTIMIZER_NAMES)

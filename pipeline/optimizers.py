"""Optimisers by name, with their own hyper-parameters and gradient clipping.

Why: every phase of fine-tuning compiles a fresh optimiser (Keras needs a recompile after `trainable`
changes, and a stale optimiser would carry the previous phase's moments), so the optimiser is
described by a name and options and built on demand. The tables below are plain data, importable
without Keras, so params validation can refuse a key an optimiser does not take before TensorFlow
loads; a test checks them against Keras' own signatures. Layer-wise learning rates (discriminative
fine-tuning) come from `pipeline.layerwise`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

# name -> class name in keras.optimizers.
_OPTIMIZER_CLASSES: dict[str, str] = {
    "sgd": "SGD",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "rmsprop": "RMSprop",
    "adam": "Adam",
    "adamw": "AdamW",
    "adamax": "Adamax",
    "nadam": "Nadam",
}
OPTIMIZER_NAMES: tuple[str, ...] = tuple(_OPTIMIZER_CLASSES)

# name -> the hyper-parameters it takes, with Keras' defaults.
OPTIMIZER_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "sgd": {"momentum": 0.0, "nesterov": False},
    "adagrad": {"initial_accumulator_value": 0.1, "epsilon": 1e-7},
    "adadelta": {"rho": 0.95, "epsilon": 1e-7},
    "rmsprop": {"rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False},
    "adam": {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False},
    "adamw": {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False, "weight_decay": 0.004},
    "adamax": {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
    "nadam": {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
}
CLIPPING_OPTIONS: tuple[str, ...] = ("clipvalue", "clipnorm", "global_clipnorm")

# name -> the attribute holding its momentum term (what 1cycle cycles), None when it has none.
MOMENTUM_TERM: dict[str, str | None] = {
    "sgd": "momentum",
    "adagrad": None,
    "adadelta": None,
    "rmsprop": "momentum",
    "adam": "beta_1",
    "adamw": "beta_1",
    "adamax": "beta_1",
    "nadam": "beta_1",
}
# Keras insists on floats for these (SGD rejects an int momentum).
_FLOAT_OPTIONS = frozenset({"momentum", "rho", "epsilon", "beta_1", "beta_2", "weight_decay"})


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validates an optimiser's options against the tables, without Keras.

    Args:
        name: A registered optimiser name.
        options: Its hyper-parameters and at most one clipping option; None values count as unset.

    Returns:
        The options that are set, floats where Keras wants floats.

    Raises:
        ValueError: An unknown name, a key the optimiser does not take, or more than one clipping.
    """
    if name not in _OPTIMIZER_CLASSES:
        raise ValueError(f"unknown optimizer {name!r}; registered: {', '.join(OPTIMIZER_NAMES)}")
    given = {key: value for key, value in options.items() if value is not None}
    allowed = (*OPTIMIZER_HYPERPARAMETERS[name], *CLIPPING_OPTIONS)
    for key in given:
        if key not in allowed:
            raise ValueError(f"optimizer {name} does not take {key!r}; it takes: {', '.join(allowed)}")
    clipping = [key for key in CLIPPING_OPTIONS if key in given]
    if len(clipping) > 1:
        raise ValueError(f"choose at most one of {', '.join(CLIPPING_OPTIONS)}; received {', '.join(clipping)}")
    return {key: float(value) if key in _FLOAT_OPTIONS else value for key, value in given.items()}


def optimizer_class(name: str) -> type[keras.optimizers.Optimizer]:
    """The Keras optimiser class registered under `name`.

    Args:
        name: A registered name (see `OPTIMIZER_NAMES`).

    Returns:
        The class, e.g. `keras.optimizers.Adam` for "adam".

    Raises:
        ValueError: `name` is not registered (the message lists the registered names).
    """
    check_options(name, {})
    import keras

    return getattr(keras.optimizers, _OPTIMIZER_CLASSES[name])


def make_optimizer(
    name: str,
    *,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    options: Mapping[str, Any] | None = None,
    variable_multipliers: Mapping[str, float] | None = None,
) -> keras.optimizers.Optimizer:
    """Builds a fresh optimiser.

    Args:
        name: A registered name (see `OPTIMIZER_NAMES`).
        learning_rate: Its learning rate, a number or a Keras schedule.
        options: Its own hyper-parameters (see `OPTIMIZER_HYPERPARAMETERS`) and at most one clipping option.
        variable_multipliers: Variable path -> multiple of the learning rate for that variable
            (discriminative learning rates, see `pipeline.layerwise`); None or all 1 for none. Unlisted
            variables train at the base LR; building the optimiser on variables that lack a listed path
            raises ValueError.

    Returns:
        A new, unbuilt Keras optimiser: the Keras class itself, or its layer-wise subclass when a
        multiplier is not 1 (its `learning_rate` is still the base LR).

    Raises:
        ValueError: `name` is not registered (the message lists the registered names), or the options
            are not the optimiser's.
    """
    keyword_arguments = check_options(name, options or {})
    keras_class = optimizer_class(name)
    if variable_multipliers and any(value != 1.0 for value in variable_multipliers.values()):
        from pipeline.layerwise import layerwise_class

        return layerwise_class(keras_class)(
            learning_rate=learning_rate, variable_multipliers=variable_multipliers, **keyword_arguments
        )
    return keras_class(learning_rate=learning_rate, **keyword_arguments)

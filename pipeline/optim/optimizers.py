"""Optimisers by name: the Keras class each name stands for, built fresh for every phase.

Why: every phase of fine-tuning compiles a fresh optimiser (Keras needs a recompile after `trainable`
changes, and a stale optimiser would carry the previous phase's moments), so the optimiser is
described by its validated params model (`pipeline.params.optimizer`: the name, its own
hyper-parameters and clipping) and built on demand. Those options are checked once, by pydantic; Keras
checks its own arguments. Layer-wise learning rates (discriminative fine-tuning) come from
`pipeline.optim.layerwise`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import keras

from pipeline.optim.gradient_norms import gradient_norm_class
from pipeline.optim.layerwise import layerwise_class

if TYPE_CHECKING:
    from pipeline.params.optimizer import OptimizerParams

# name -> class name in keras.optimizers (the params schema has one model per name; a test keeps them equal).
OPTIMIZER_CLASSES: dict[str, str] = {
    "sgd": "SGD",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "rmsprop": "RMSprop",
    "adam": "Adam",
    "adamw": "AdamW",
    "adamax": "Adamax",
    "nadam": "Nadam",
}
OPTIMIZER_NAMES: tuple[str, ...] = tuple(OPTIMIZER_CLASSES)


def optimizer_class(name: str) -> type[keras.optimizers.Optimizer]:
    """The Keras optimiser class registered under `name`.

    Args:
        name: A registered name (see `OPTIMIZER_NAMES`).

    Returns:
        The class, e.g. `keras.optimizers.Adam` for "adam".

    Raises:
        ValueError: `name` is not registered (the message lists the registered names).
    """
    if name not in OPTIMIZER_CLASSES:
        raise ValueError(f"unknown optimizer {name!r}; registered: {', '.join(OPTIMIZER_NAMES)}")
    return getattr(keras.optimizers, OPTIMIZER_CLASSES[name])


def make_optimizer(
    optimizer: OptimizerParams,
    *,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    variable_multipliers: Mapping[str, float] | None = None,
    variable_blocks: Mapping[str, str] | None = None,
) -> keras.optimizers.Optimizer:
    """Builds a fresh optimiser from its params model.

    Args:
        optimizer: The validated optimiser settings: its registered `name` and its `options()` (its own
            hyper-parameters and the clipping that is set), passed to the Keras class as they are.
        learning_rate: Its learning rate, a number or a Keras schedule.
        variable_multipliers: Variable path -> multiple of the learning rate for that variable
            (discriminative learning rates, see `pipeline.optim.layerwise`); None or all 1 for none.
            Unlisted variables train at the base LR; building the optimiser on variables that lack a
            listed path raises ValueError.
        variable_blocks: Variable path -> block name: the optimiser then accumulates each block's
            gradient norm on every step (`pipeline.optim.gradient_norms`); None for no accumulation.

    Returns:
        A new, unbuilt Keras optimiser: the Keras class itself, or its layer-wise subclass when a
        multiplier is not 1 (its `learning_rate` is still the base LR), either of them in its
        gradient-norm variant when `variable_blocks` is given.

    Raises:
        ValueError: The name is not registered (the message lists the registered names).
    """
    keras_class = optimizer_class(optimizer.name)
    arguments = {"learning_rate": learning_rate, **optimizer.options()}
    if variable_multipliers and any(value != 1.0 for value in variable_multipliers.values()):
        keras_class = layerwise_class(keras_class)
        arguments["variable_multipliers"] = variable_multipliers
    if variable_blocks is not None:
        keras_class = gradient_norm_class(keras_class)
        arguments["variable_blocks"] = variable_blocks
    return keras_class(**arguments)


def custom_objects() -> dict[str, type]:
    """The layer-wise and gradient-norm variants of every registered optimiser, made and registered with Keras.

    Why: a model saved while compiled with a layer-wise optimiser names its class; a fresh process must
    make the class before `keras.saving.load_model` can find it.

    Returns:
        Class name -> class, also usable as `load_model(..., custom_objects=...)`.
    """
    layerwise = [layerwise_class(optimizer_class(name)) for name in OPTIMIZER_NAMES]
    plain = [optimizer_class(name) for name in OPTIMIZER_NAMES]
    variants = [*layerwise, *(gradient_norm_class(variant) for variant in (*plain, *layerwise))]
    return {variant.__name__: variant for variant in variants}

"""Optimisers by name: one registry shared by params validation and training.

Why: every phase of fine-tuning compiles a fresh optimiser at its own learning rate (Keras needs a
recompile after `trainable` changes, and a stale optimiser would carry the previous phase's moments),
so the optimiser is described by a name and built on demand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

# name -> class name in keras.optimizers; kept as strings so that this module imports no Keras.
_OPTIMIZER_CLASSES: dict[str, str] = {
    "sgd": "SGD",
    "adagrad": "Adagrad",
    "rmsprop": "RMSprop",
    "adam": "Adam",
    "nadam": "Nadam",
    "adamw": "AdamW",
}
OPTIMIZER_NAMES: tuple[str, ...] = tuple(_OPTIMIZER_CLASSES)


def make_optimizer(name: str, *, learning_rate: float) -> keras.optimizers.Optimizer:
    """Builds a fresh optimiser.

    Args:
        name: A registered name (see `OPTIMIZER_NAMES`).
        learning_rate: Its initial learning rate.

    Returns:
        A new, unbuilt Keras optimiser.

    Raises:
        ValueError: `name` is not registered; the message lists the registered names.
    """
    if name not in _OPTIMIZER_CLASSES:
        raise ValueError(f"unknown optimizer {name!r}; registered: {', '.join(OPTIMIZER_NAMES)}")
    import keras

    optimizer_class = getattr(keras.optimizers, _OPTIMIZER_CLASSES[name])
    return optimizer_class(learning_rate=learning_rate)

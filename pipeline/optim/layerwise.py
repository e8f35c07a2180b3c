"""Discriminative (layer-wise) learning rates: each lower block trains at the LR of the block above / decay.

Why our own: Keras 3 has no per-variable learning rate. Scaling the gradients instead would be wrong:
Adam, RMSprop and their kin divide by a running gradient scale, so a scaled gradient gives the same
step and the multiplier vanishes. Here the optimiser's own `update_step` receives `learning_rate *
multiplier` for each variable, so the step itself is scaled, whatever the optimiser (ULMFiT's
discriminative fine-tuning, fastai's `slice(lo, hi)`, PyTorch's parameter groups).

Decoupled weight decay (AdamW's `weight_decay`, `lr * weight_decay * variable` per step) scales with the
multiplier too, as it does in PyTorch's parameter groups: it is part of each step, and a pretrained
lower block that moves slowly along its gradient must not be pulled towards zero at the head's rate.

A layer-wise optimiser is registered with Keras' serialisation, so a model compiled with one saves and
loads with its optimiser; in a fresh process, call `pipeline.optim.optimizers.custom_objects()` (or
build any layer-wise optimiser) before `keras.saving.load_model`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

# The package name Keras files the layer-wise classes under: the module's name before it moved into
# pipeline.optim, kept so that models saved compiled with a layer-wise optimiser still load.
SERIALIZATION_PACKAGE = "pipeline.layerwise"


def block_multipliers(
    block_layer_names: Sequence[Sequence[str]], *, trainable_blocks: int, decay_per_block: float
) -> dict[str, float]:
    """LR multipliers of the layers of the trainable blocks.

    The new head is the group above the top block and trains at the full LR (it is not listed). The top
    backbone block trains at 1/decay of it, the next at 1/decay**2, and so on. Frozen blocks are not
    listed: they have no trainable variables.

    Args:
        block_layer_names: Layer names of each block, top block first.
        trainable_blocks: How many blocks from the top train.
        decay_per_block: The divisor between a block and the one above it (1: every block at the full LR).

    Returns:
        Layer name -> multiplier, for the layers of the `trainable_blocks` top blocks.

    Raises:
        ValueError: `decay_per_block` below 1, or `trainable_blocks` outside [0, number of blocks].
    """
    if decay_per_block < 1.0:
        raise ValueError(f"decay_per_block is {decay_per_block}; it must be >= 1 (lower blocks learn slower)")
    if not 0 <= trainable_blocks <= len(block_layer_names):
        raise ValueError(
            f"trainable_blocks is {trainable_blocks}; it must be in [0, {len(block_layer_names)}] "
            f"(there are {len(block_layer_names)} blocks)"
        )
    return {
        name: 1.0 / decay_per_block ** (position + 1)
        for position, names in enumerate(block_layer_names[:trainable_blocks])
        for name in names
    }


def walk_layers(model: keras.Model) -> list[keras.Layer]:
    """The layers of `model` and of the models nested in it, depth first."""
    import keras

    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(walk_layers(layer))
    return found


def variable_multipliers(model: keras.Model, layer_multipliers: Mapping[str, float]) -> dict[str, float]:
    """Maps layer multipliers to the paths of those layers' trainable variables.

    Why paths: the optimiser is built on variables, and `variable.path` (e.g. "top_conv/kernel") is how
    it recognises them; a layer's name alone would not reach its variables.

    Args:
        model: The model to be compiled; layers of models nested in it count too.
        layer_multipliers: Layer name -> multiple of the learning rate (from `block_multipliers`).

    Returns:
        Variable path -> multiplier, for the trainable variables of the named layers (call after setting
        `trainable`: frozen variables are left out).

    Raises:
        ValueError: `layer_multipliers` names a layer the model does not have (its multiplier would be
            silently ignored).
    """
    layers = {layer.name: layer for layer in walk_layers(model)}
    missing = sorted(set(layer_multipliers) - set(layers))
    if missing:
        raise ValueError(
            f"layer_multipliers names layers that model {model.name!r} does not have: {', '.join(missing)}; "
            f"it has {len(layers)} layers"
        )
    return {
        variable.path: float(multiplier)
        for name, multiplier in layer_multipliers.items()
        for variable in layers[name].trainable_weights
    }


class _LayerwiseUpdates:
    """Mixin for a Keras optimiser class: each variable's update uses `learning_rate * its multiplier`.

    Why a mixin on the optimiser's own class rather than a wrapper: the class keeps its own `update_step`,
    slots, `get_config` and `learning_rate`, and Keras (its trainer, `LossScaleOptimizer`, callbacks that
    set `learning_rate` or momentum) treats it as the optimiser it is.
    """

    def __init__(self, *, variable_multipliers: Mapping[str, float], **keyword_arguments: Any) -> None:
        super().__init__(**keyword_arguments)
        self.variable_multipliers = {path: float(value) for path, value in variable_multipliers.items()}
        self._multiplier_by_key: dict[Any, float] = {}

    def build(self, variables: Sequence[Any]) -> None:
        """Builds the optimiser's slots and the variable key -> multiplier map.

        Why keys: in the TensorFlow backend `update_step` receives the backend's own variable rather than
        the keras.Variable given here; `_var_key` maps both to the same key.

        Args:
            variables: The keras.Variables the optimiser trains.

        Raises:
            ValueError: A path in `variable_multipliers` matches none of `variables` (a stale or misspelt
                mapping would silently train at the base LR) or more than one of them.
        """
        super().build(variables)
        paths = [variable.path for variable in variables]
        unknown = sorted(set(self.variable_multipliers) - set(paths))
        if unknown:
            raise ValueError(
                f"variable_multipliers names variables that {type(self).__name__} does not train: "
                f"{', '.join(unknown)}; it trains {len(paths)} variables"
            )
        shared = sorted({path for path in paths if path in self.variable_multipliers and paths.count(path) > 1})
        if shared:
            raise ValueError(
                f"variable_multipliers is ambiguous: several trained variables have the path {', '.join(shared)}"
            )
        self._multiplier_by_key = {
            self._var_key(variable): self.variable_multipliers.get(variable.path, 1.0) for variable in variables
        }

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
        """Runs the optimiser's own update at `learning_rate` times the variable's multiplier."""
        multiplier = self._multiplier_by_key.get(self._var_key(variable), 1.0)
        if multiplier != 1.0:
            learning_rate = learning_rate * multiplier
        return super().update_step(gradient, variable, learning_rate)

    def _apply_weight_decay(self, variables: Sequence[Any]) -> None:
        # Keras decays by `self.learning_rate * self.weight_decay`, the base LR. Each group of variables
        # sharing a multiplier goes through Keras' own code (which the TensorFlow backend makes
        # distribution-aware) with the decay scaled for that call, the rate read as the call runs.
        if self.weight_decay is None:
            return
        groups: dict[float, list[Any]] = {}
        for variable in variables:
            groups.setdefault(self._multiplier_by_key.get(self._var_key(variable), 1.0), []).append(variable)
        base_decay = self.weight_decay
        try:
            for multiplier, group in groups.items():
                self.weight_decay = base_decay * multiplier
                super()._apply_weight_decay(group)
        finally:
            self.weight_decay = base_decay

    def get_config(self) -> dict[str, Any]:
        """The optimiser's config plus `variable_multipliers`."""
        return {**super().get_config(), "variable_multipliers": dict(self.variable_multipliers)}


@functools.cache
def layerwise_class(optimizer_class: type) -> type:
    """The layer-wise variant of a Keras optimiser class (cached, so each class is made once).

    Its constructor takes the class's own arguments plus `variable_multipliers` (variable path ->
    multiplier; unlisted variables use 1); `learning_rate` stays the base LR the run logs. The class is
    registered with Keras' serialisation as "pipeline.layerwise>Layerwise<Class>".

    Args:
        optimizer_class: A Keras optimiser class, e.g. `keras.optimizers.Adam`.

    Returns:
        The class `Layerwise<Class>`, a subclass of `optimizer_class`.
    """
    import keras

    variant = type(
        f"Layerwise{optimizer_class.__name__}", (_LayerwiseUpdates, optimizer_class), {"__module__": __name__}
    )
    return keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)(variant)

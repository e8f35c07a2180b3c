"""Discriminative (layer-wise) learning rates: each lower block trains at the LR of the block above / decay.

Why our own: Keras 3 has no per-variable learning rate. Scaling the gradients instead would be wrong:
Adam, RMSprop and their kin divide by a running gradient scale, so a scaled gradient gives the same
step and the multiplier vanishes. Here the optimiser's own `update_step` receives `learning_rate *
multiplier` for each variable, so the step itself is scaled, whatever the optimiser (ULMFiT's
discriminative fine-tuning, fastai's `slice(lo, hi)`, Lightning's per-group LR).

Decoupled weight decay (AdamW's `weight_decay`) is left at the base LR for every variable: it is a
pull towards zero, not part of the step a block takes along its gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras


def block_multipliers(
    block_layer_names: Sequence[Sequence[str]], *, trainable_blocks: int, decay_per_block: float
) -> dict[str, float]:
    """LR multipliers of the layers of the trainable blocks.

    The new head is the group above the top block and trains at the full LR (it is not listed). The top
    backbone block trains at 1/decay of it, the next at 1/decay**2, and so on.

    Args:
        block_layer_names: Layer names of each block, top block first.
        trainable_blocks: How many blocks from the top train.
        decay_per_block: The divisor between a block and the one above it (1: every block at the full LR).

    Returns:
        Layer name -> multiplier, for the trainable blocks' layers; empty when `decay_per_block` is 1.

    Raises:
        ValueError: `decay_per_block` below 1, or `trainable_blocks` outside [0, number of blocks].
    """
    if decay_per_block < 1.0:
        raise ValueError(f"decay_per_block is {decay_per_block}; it must be >= 1 (lower blocks learn slower)")
    if not 0 <= trainable_blocks <= len(block_layer_names):
        raise ValueError(f"trainable_blocks is {trainable_blocks}; there are {len(block_layer_names)} blocks")
    if decay_per_block == 1.0:
        return {}
    return {
        name: decay_per_block ** -(position + 1)
        for position, names in enumerate(block_layer_names[:trainable_blocks])
        for name in names
    }


def variable_multipliers(model: keras.Model, layer_multipliers: Mapping[str, float]) -> dict[str, float]:
    """Variable path -> multiplier, for the trainable variables of the layers named in `layer_multipliers`."""
    found: dict[str, float] = {}
    for layer in model.layers:
        if layer.name in layer_multipliers:
            for variable in layer.trainable_weights:
                found[variable.path] = layer_multipliers[layer.name]
    return found


class _LayerwiseUpdates:
    """Mixin for a Keras optimiser class: each variable's update uses `learning_rate * its multiplier`."""

    def __init__(self, *, variable_multipliers: Mapping[str, float], **keyword_arguments: Any) -> None:
        super().__init__(**keyword_arguments)
        self.variable_multipliers = dict(variable_multipliers)
        self._multiplier_by_key: dict[Any, float] = {}

    def build(self, variables: Sequence[Any]) -> None:
        super().build(variables)
        # `update_step` may receive the backend's own variable rather than the keras.Variable built here;
        # `_var_key` maps both to the same key.
        self._multiplier_by_key = {
            self._var_key(variable): self.variable_multipliers.get(variable.path, 1.0) for variable in variables
        }

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
        multiplier = self._multiplier_by_key.get(self._var_key(variable), 1.0)
        if multiplier != 1.0:
            learning_rate = learning_rate * multiplier
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "variable_multipliers": self.variable_multipliers}


@functools.cache
def layerwise_class(optimizer_class: type) -> type:
    """The layer-wise variant of a Keras optimiser class (cached, so each class is made once).

    Its constructor takes the class's own arguments plus `variable_multipliers` (variable path ->
    multiplier; unlisted variables use 1); `learning_rate` stays the base LR the run logs.
    """
    return type(f"Layerwise{optimizer_class.__name__}", (_LayerwiseUpdates, optimizer_class), {})

"""Per-block gradient norms, taken from the gradients the training step already computed.

Why in the optimiser: Keras hands every step's gradients to `optimizer.apply`, so measuring them
there costs one squared sum per variable and no extra forward or backward pass (a `train_step`
override would have to copy Keras' own). The norms are those of the raw gradients, after the loss
scale of mixed precision is undone and before clipping, so an exploding gradient shows even when
clipping hides it from the update.

Each step adds, per block, the norm of the block's gradient (all its variables as one vector) to a
running sum and keeps the largest; `pipeline.training.diagnostics` reads and resets them at epoch
end. The accumulator is a variable of its own, outside the optimiser's saved state, synchronised on
read: under a MirroredStrategy each replica measures the gradient of its share of the batch (Keras
scales each replica's loss by 1/replicas, which is undone here), and reading averages the replicas.
With one replica it is exactly the norm of the batch's gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

# The block of every variable no block lists: the new head (the layers above the backbone's top block).
HEAD_BLOCK = "head"
SERIALIZATION_PACKAGE = "pipeline.gradient_norms"


def variable_blocks(model: keras.Model, block_layer_names: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Maps the paths of the model's trainable variables to their block's name.

    Args:
        model: The model to be compiled (layers of nested models count); call after setting `trainable`.
        block_layer_names: Block name -> names of its layers. Layers the model lacks are skipped: a
            head-only model of a cached-feature phase holds none of the frozen blocks.

    Returns:
        Variable path -> block name; trainable variables of layers no block lists belong to `HEAD_BLOCK`.
    """
    import keras

    from pipeline.optim.layerwise import walk_layers

    block_of_layer = {layer: block for block, names in block_layer_names.items() for layer in names}
    return {
        variable.path: block_of_layer.get(layer.name, HEAD_BLOCK)
        for layer in walk_layers(model)
        if not isinstance(layer, keras.Model)  # a nested model's variables are listed by its own layers
        for variable in layer.trainable_weights
    }


class _GradientNormAccumulation:
    """Mixin for a Keras optimiser class: accumulates each block's gradient norm on every step.

    Why a mixin on the optimiser's own class (as `pipeline.optim.layerwise`): Keras, its loss-scale
    wrapper and the callbacks that set `learning_rate` keep treating it as the optimiser it is.
    """

    def __init__(self, *, variable_blocks: Mapping[str, str], **keyword_arguments: Any) -> None:
        super().__init__(**keyword_arguments)
        self.variable_blocks = dict(variable_blocks)
        self.block_names: tuple[str, ...] = tuple(dict.fromkeys(self.variable_blocks.values()))
        if HEAD_BLOCK not in self.block_names:
            self.block_names += (HEAD_BLOCK,)
        self._block_by_key: dict[Any, int] = {}
        object.__setattr__(self, "gradient_norm_state", None)

    def build(self, variables: Sequence[Any]) -> None:
        """Builds the optimiser's slots, the variable key -> block map and the accumulator.

        The accumulator holds, per block, the sum of the steps' norms and the largest norm, then the
        step count: `2 * len(block_names) + 1` float32 values.
        """
        import keras

        super().build(variables)
        self._block_by_key = {
            self._var_key(variable): self.block_names.index(self.variable_blocks.get(variable.path, HEAD_BLOCK))
            for variable in variables
        }
        # Not `add_variable`: it cannot make an on-read variable, and the accumulator is no part of the
        # optimiser's state to save (nor to restore with a model's weights).
        state = keras.Variable(
            initializer="zeros",
            shape=(2 * len(self.block_names) + 1,),
            dtype="float32",
            trainable=False,
            synchronization="on_read",
            aggregation="mean",
            name="gradient_norm_state",
        )
        # Set past Keras' and TensorFlow's attribute tracking: the optimiser's `variables` (what is saved
        # and restored) stay those of its plain class.
        object.__setattr__(self, "gradient_norm_state", state)

    def _backend_apply_gradients(self, grads: Sequence[Any], trainable_variables: Sequence[Any]) -> None:
        self._accumulate_norms(grads, trainable_variables)
        super()._backend_apply_gradients(grads, trainable_variables)

    def _accumulate_norms(self, grads: Sequence[Any], trainable_variables: Sequence[Any]) -> None:
        import tensorflow as tf

        squares: list[list[Any]] = [[] for _ in self.block_names]
        for gradient, variable in zip(grads, trainable_variables, strict=True):
            if gradient is None:
                continue
            values = gradient.values if isinstance(gradient, tf.IndexedSlices) else gradient
            # float32 even under mixed precision: the square of a float16 gradient overflows at 256.
            squares[self._block_by_key[self._var_key(variable)]].append(
                tf.reduce_sum(tf.square(tf.cast(values, tf.float32)))
            )
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        norms = tf.stack([tf.sqrt(tf.add_n(terms)) if terms else tf.constant(0.0) for terms in squares]) * float(
            replicas
        )
        state = self.gradient_norm_state.value
        blocks = len(self.block_names)
        state.assign(
            tf.concat(
                [state[:blocks] + norms, tf.maximum(state[blocks : 2 * blocks], norms), state[2 * blocks :] + 1.0],
                axis=0,
            )
        )

    def read_gradient_norms(self, *, reset: bool = True) -> dict[str, tuple[float, float]]:
        """Each block's mean and largest gradient norm over the steps since the last reset.

        Args:
            reset: Set the accumulator back to zero after reading (each epoch starts afresh).

        Returns:
            Block name -> (mean norm per step, largest norm of a step); empty before the first step.
        """
        import numpy as np

        if self.gradient_norm_state is None:
            return {}
        state = np.asarray(self.gradient_norm_state.numpy(), dtype=np.float64)
        if reset:
            self.gradient_norm_state.assign(np.zeros_like(state, dtype=np.float32))
        blocks, steps = len(self.block_names), state[-1]
        if steps <= 0:
            return {}
        return {
            name: (float(state[index] / steps), float(state[blocks + index]))
            for index, name in enumerate(self.block_names)
            if name in set(self.variable_blocks.values())
        }

    def get_config(self) -> dict[str, Any]:
        """The optimiser's config plus `variable_blocks`."""
        return {**super().get_config(), "variable_blocks": dict(self.variable_blocks)}


@functools.cache
def gradient_norm_class(optimizer_class: type) -> type:
    """The variant of a Keras optimiser class (layer-wise or not) that accumulates block gradient norms.

    Its constructor takes the class's own arguments plus `variable_blocks` (variable path -> block
    name; unlisted variables belong to the head). Registered with Keras' serialisation as
    "pipeline.gradient_norms>GradientNorms<Class>".

    Args:
        optimizer_class: A Keras optimiser class, or its layer-wise variant.

    Returns:
        The class `GradientNorms<Class>`, a subclass of `optimizer_class`.
    """
    import keras

    variant = type(
        f"GradientNorms{optimizer_class.__name__}",
        (_GradientNormAccumulation, optimizer_class),
        {"__module__": __name__},
    )
    return keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)(variant)


def accumulating_optimizer(optimizer: Any) -> Any:
    """The optimiser that accumulates gradient norms inside `optimizer` (a loss-scale wrapper's inner one), or None."""
    for candidate in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        if isinstance(candidate, _GradientNormAccumulation):
            return candidate
    return None

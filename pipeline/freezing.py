"""Which layers train: freeze the backbone, unfreeze the top k named blocks, keep BN frozen.

Why: under Keras 3 `training=False` is not honoured inside `fit`, so the only thing that keeps a
BatchNormalization layer's moving statistics still is `trainable = False`; and an inner layer's flag
counts only while its container is trainable. So the order is: container on, groups by position,
then every BN off. The caller must recompile after this (Keras silently ignores the change
otherwise); `pipeline.training` compiles a fresh optimiser for every phase.
"""

from __future__ import annotations

import keras

from pipeline.backbones.registry import BlockGroup


def set_trainable_blocks(
    model: keras.Model,
    blocks_top_down: tuple[BlockGroup, ...],
    *,
    trainable_blocks: int,
    freeze_batch_norm: bool = True,
) -> dict[str, bool]:
    """Makes the top `trainable_blocks` groups trainable and every other backbone layer frozen.

    Layers outside the groups (the new head) stay trainable.

    Args:
        model: The classifier holding the backbone's layers.
        blocks_top_down: The backbone's block groups, top first.
        trainable_blocks: How many groups from the top train; 0 freezes the whole backbone.
        freeze_batch_norm: Keep BatchNormalization layers frozen inside unfrozen groups.

    Returns:
        Group name -> whether it trains.

    Raises:
        ValueError: `trainable_blocks` is negative or exceeds the number of groups.
    """
    if not 0 <= trainable_blocks <= len(blocks_top_down):
        raise ValueError(
            f"trainable_blocks is {trainable_blocks}; the backbone has {len(blocks_top_down)} blocks "
            f"({', '.join(group.name for group in blocks_top_down)})"
        )
    model.trainable = True
    state: dict[str, bool] = {}
    for position, group in enumerate(blocks_top_down):
        trains = position < trainable_blocks
        state[group.name] = trains
        for name in group.layer_names:
            layer = model.get_layer(name)
            layer.trainable = trains and not (freeze_batch_norm and isinstance(layer, keras.layers.BatchNormalization))
    return state


def trainable_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers that own trainable weights, in model order."""
    return [layer.name for layer in model.layers if layer.trainable_weights]

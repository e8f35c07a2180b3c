"""What every kind of backbone gives the rest of the pipeline: a `Backbone`, its blocks, and where blocks may end.

Why a module below the kinds: the registry, the TF Hub / SavedModel loader and the `.keras` file loader
all build `Backbone`s from `BlockGroup`s cut at single-tensor boundaries, and the head, the freezing and
the feature cache read them. With the shared types here, every kind imports down to this module and
the dispatcher (`pipeline.backbones.registry`) imports up to the kinds, never the other way.

A block boundary must be a single-tensor cut, both for a Keras model in memory (`single_tensor_cuts`)
and for the graph read out of a `.keras` file's config before TensorFlow loads
(`pipeline.backbones.keras_archive`). One algorithm on the graph's edges (`cut_flags`) serves both, so
params validation and the loaded model agree on where blocks may end. Keras is imported inside the
functions that need it: the archive reader and params validation import this module without TensorFlow.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class BlockGroup:
    """A named group of backbone layers that is frozen or unfrozen as one."""

    name: str
    layer_names: tuple[str, ...]


@dataclass(frozen=True)
class Backbone:
    """A pretrained feature extractor ready for a new head.

    Attributes:
        name: Registry name.
        model: Functional model from the preprocessed image to the last feature map.
        blocks_top_down: Block groups, the one nearest the output first; together they hold every
            layer of `model` that is not the input.
        make_preprocessing: Builds a fresh Keras layer mapping 0..255 RGB to what `model` expects.
    """

    name: str
    model: keras.Model
    blocks_top_down: tuple[BlockGroup, ...]
    make_preprocessing: Callable[[], keras.layers.Layer]

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(group.name for group in self.blocks_top_down)


def cut_flags(inbound: Sequence[Sequence[int]]) -> list[bool]:
    """Which operations' outputs separate the graph: nothing after them reads anything before them.

    A position is a cut in one topological order exactly when every path from the input to the output
    passes through it, so the flags do not depend on which topological order the caller lists.

    Args:
        inbound: For each operation in topological order, the positions of the operations it reads.

    Returns:
        One flag per operation.
    """
    cuts = [False] * len(inbound)
    earliest_read_after = len(inbound)
    for index in range(len(inbound) - 1, -1, -1):
        cuts[index] = earliest_read_after >= index
        earliest_read_after = min([earliest_read_after, *inbound[index]])
    return cuts


def group_layers(model: keras.Model, prefixes: list[tuple[str, str]]) -> tuple[BlockGroup, ...]:
    """Assigns every layer of `model` to the group whose name prefix it carries.

    Args:
        model: The backbone.
        prefixes: (group name, layer-name prefix), top-down.

    Returns:
        The groups, top-down.

    Raises:
        ValueError: A layer matches no prefix (the map would silently leave it frozen).
    """
    import keras

    members: dict[str, list[str]] = {group: [] for group, _ in prefixes}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        group = next((group for group, prefix in prefixes if layer.name.startswith(prefix)), None)
        if group is None:
            raise ValueError(f"layer {layer.name!r} of {model.name} belongs to no block group")
        members[group].append(layer.name)
    return tuple(BlockGroup(name=group, layer_names=tuple(members[group])) for group, _ in prefixes)


def single_tensor_cuts(model: keras.Model) -> list[bool]:
    """Which layers' outputs separate the graph: nothing after them reads anything before them.

    Why: a block boundary must be such a cut, so that freezing everything below it leaves one tensor
    for the upper blocks to start from (the frozen-feature cache fits a sub-model from that tensor).
    The walk covers every operation, not only layers: `inputs + x` in a Keras model is an operation
    of its own that reads a tensor from far below.

    Args:
        model: A functional model with one input and one output.

    Returns:
        One flag per layer of `model.layers`, in that order.
    """
    import keras

    operations = model.operations
    position = {id(operation): index for index, operation in enumerate(operations)}
    # Keras 3 has no public accessor for an operation's producers; `_inbound_nodes` and
    # `_keras_history` are what Functional itself walks.
    inbound = [
        [
            position[id(tensor._keras_history.operation)]
            for node in operation._inbound_nodes
            for tensor in node.input_tensors
            if id(tensor._keras_history.operation) in position
        ]
        for operation in operations
    ]
    return [
        cut
        for cut, operation in zip(cut_flags(inbound), operations, strict=True)
        if isinstance(operation, keras.layers.Layer)
    ]


def group_layers_at_cuts(model: keras.Model, blocks: tuple[tuple[str, str], ...]) -> tuple[BlockGroup, ...]:
    """Splits `model` into blocks that end at single-tensor cuts, named by the patterns of their last layers.

    Each block but the top one ends at the first cut at or after the last layer whose name fully matches
    its pattern; the top block ends at the model's output and `stem` takes everything below the lowest
    named block. Layers Keras names generically fall into the block their position puts them in.

    Args:
        model: The backbone.
        blocks: (block name, name pattern), top-down, without `stem`.

    Returns:
        The groups, top-down, `stem` last; every layer but the input is in exactly one.

    Raises:
        ValueError: A pattern matches no layer, a block would be empty, or a layer whose name matches a
            block's pattern falls into another block (the map is wrong for this model).
    """
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    offset = len(model.layers) - len(layers)
    cuts = single_tensor_cuts(model)[offset:]
    names = [layer.name for layer in layers]
    ends: list[int] = []
    first_match = 0
    for position, (block, pattern) in enumerate(blocks):
        matches = [index for index, name in enumerate(names) if re.fullmatch(pattern, name)]
        if not matches:
            raise ValueError(f"block {block!r} of {model.name}: no layer matches {pattern!r}")
        first_match = matches[0]
        if position == 0:
            ends.append(len(layers) - 1)
            continue
        end = next((index for index in range(matches[-1], len(layers)) if cuts[index]), None)
        if end is None or end >= ends[-1]:
            raise ValueError(f"block {block!r} of {model.name} has no single-tensor cut below the block above it")
        ends.append(end)
    # The stem ends at the last cut below the lowest named block's first layer.
    stem_end = next((index for index in range(first_match - 1, -1, -1) if cuts[index]), None)
    if stem_end is None:
        raise ValueError(f"{model.name} has no single-tensor cut below block {blocks[-1][0]!r}: no stem")
    ends.append(stem_end)
    names_top_down = [*(block for block, _ in blocks), "stem"]
    starts = [*(end + 1 for end in ends[1:]), 0]
    groups = [
        BlockGroup(name=block, layer_names=tuple(names[start : end + 1]))
        for block, start, end in zip(names_top_down, starts, ends, strict=True)
    ]
    for group, (block, pattern) in zip(groups, blocks, strict=False):
        if not group.layer_names:
            raise ValueError(f"block {block!r} of {model.name} is empty")
        strays = [
            name for other in groups if other is not group for name in other.layer_names if re.fullmatch(pattern, name)
        ]
        if strays:
            raise ValueError(f"layers {strays[:3]} match block {block!r} of {model.name} but fall in another block")
    return tuple(groups)

"""Backbones by name: each gives a feature extractor, its preprocessing and its named block groups.

`load_backbone` also takes a TF Hub handle or a SavedModel directory (`pipeline.backbones.hub`) and
dispatches on `pipeline.backbones.names.backbone_kind`.

Why: the fine-tuning recipe speaks of "the top 2 blocks", never of raw layer counts, and each family
has its own preprocessing; a `Backbone` carries both so the rest of the pipeline is family-agnostic.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.backbones import efficientnet_lite
from pipeline.backbones.applications import (
    APPLICATIONS,
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    ApplicationSpec,
)
from pipeline.backbones.cuts import cut_flags
from pipeline.backbones.names import BACKBONE_BLOCKS, BACKBONE_NAMES, backbone_kind

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


def application_preprocessing(mode: str) -> keras.layers.Layer:
    """The Keras layer doing what `keras.applications.<family>.preprocess_input` does, for 0..255 RGB.

    Why layers, not the family's function: the exported model holds its preprocessing, and a Lambda
    around a Python function would need `safe_mode=False` to load. Caffe's RGB-to-BGR swap and mean
    subtraction is one fixed 1x1 convolution (a permutation kernel and the negated mean as bias).

    Args:
        mode: One of `pipeline.backbones.applications.PREPROCESSING_MODES`.

    Returns:
        A fresh, non-trainable layer.

    Raises:
        ValueError: An unknown mode.
    """
    import keras
    import numpy as np

    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocessing")
    if mode == "torch":
        mean = np.array(IMAGENET_MEAN_RGB) * 255.0
        std = np.array(IMAGENET_STD_RGB) * 255.0
        layer = keras.layers.Normalization(mean=mean, variance=std**2, name="preprocessing")
        # Built now: built lazily inside a tf.data map, it would keep graph tensors as its statistics.
        layer.build((None, None, None, 3))
        return layer
    if mode == "caffe":
        swap = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
        layer = keras.layers.Conv2D(
            3,
            1,
            kernel_initializer=keras.initializers.Constant(swap),
            bias_initializer=keras.initializers.Constant(-np.array(CAFFE_MEAN_BGR, dtype="float32")),
            trainable=False,
            name="preprocessing",
        )
        layer.build((None, None, None, 3))
        return layer
    if mode == "builtin":
        return keras.layers.Identity(name="preprocessing")
    raise ValueError(f"unknown preprocessing {mode!r}")


def keras_models_dir() -> Path:
    """Where keras.applications looks for and stores ImageNet weight files (KERAS_HOME/models)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _build_application(name: str, spec: ApplicationSpec, *, image_size: int, weights: str) -> keras.Model:
    import keras

    constructor = getattr(keras.applications, spec.constructor)
    keras_weights = "imagenet" if weights == "imagenet" else None
    try:
        model = constructor(include_top=False, weights=keras_weights, input_shape=(image_size, image_size, 3))
    except Exception as error:
        failure = re.search(r"URL fetch failure on (\S+): ", str(error))
        if failure is None:
            raise
        origin = failure.group(1)
        raise FileNotFoundError(
            f"the ImageNet weights of {name} are not on this machine and could not be downloaded: place "
            f"{origin.rsplit('/', 1)[-1]} (from {origin}) in {keras_models_dir()} (KERAS_HOME/models)"
        ) from None
    if weights not in ("imagenet", "none"):
        model.load_weights(weights)
    return model


def _application(name: str, *, image_size: int, cache_dir: Path, weights: str) -> Backbone:
    del cache_dir  # keras.applications keeps its own cache (KERAS_HOME)
    spec = APPLICATIONS[name]
    model = _build_application(name, spec, image_size=image_size, weights=weights)
    return Backbone(
        name=name,
        model=model,
        blocks_top_down=group_layers_at_cuts(model, spec.blocks),
        make_preprocessing=lambda: application_preprocessing(spec.preprocessing),
    )


def _efficientnet_lite(name: str, *, image_size: int, cache_dir: Path, weights: str) -> Backbone:
    import keras

    variant = efficientnet_lite.LITE_VARIANTS[name]
    model = efficientnet_lite.build_efficientnet_lite(
        input_shape=(image_size, image_size, 3), include_top=False, variant=variant
    )
    if weights == "imagenet":
        efficientnet_lite.load_imagenet_weights(model, cache_dir=cache_dir, variant=variant)
    elif weights != "none":
        model.load_weights(weights)
    scale, offset = efficientnet_lite.preprocess_scale_offset()
    return Backbone(
        name=name,
        model=model,
        blocks_top_down=group_layers(model, efficientnet_lite.block_groups(variant.stages)),
        make_preprocessing=lambda: keras.layers.Rescaling(scale, offset, name="preprocessing"),
    )


_BUILDERS: dict[str, Callable[..., Backbone]] = {
    **{name: functools.partial(_efficientnet_lite, name) for name in efficientnet_lite.LITE_VARIANTS},
    **{name: functools.partial(_application, name) for name in APPLICATIONS},
}
if tuple(_BUILDERS) != BACKBONE_NAMES:
    raise ImportError("pipeline.backbones.names.BACKBONE_NAMES is out of step with the registry")


def load_backbone(
    name: str, *, image_size: int, cache_dir: str | Path, weights: str = "imagenet", **kind_options: Any
) -> Backbone:
    """Builds the backbone `name` names: a registered one, a TF Hub handle, a SavedModel directory or a .keras file.

    Args:
        name: A registry name (see `BACKBONE_NAMES`), an http(s):// TF Hub handle, a SavedModel directory
            or a path ending in .keras (see `pipeline.backbones.names.backbone_kind`).
        image_size: Square input size.
        cache_dir: Folder for converted weights and the TF Hub cache (`<cache_dir>/tfhub`).
        weights: Registered backbones: "imagenet", "none" (random initialisation) or the path of a Keras
            weights file. Others hold their own weights and take only the default.
        **kind_options: Options of the kind: for a TF Hub handle or SavedModel, those of
            `pipeline.backbones.hub.load_hub_backbone` (`signature`, `training_signature`, `output_key`,
            `input_range`); for a .keras file, those of `pipeline.backbones.keras_file.load_keras_file_backbone`.
            None means unset.

    Returns:
        The backbone, every layer trainable (freezing is `pipeline.freezing`'s job).

    Raises:
        ValueError: `name` is none of the kinds (the message lists the registered names and the other forms),
            or an option is given for a kind it does not apply to.
        FileNotFoundError: The pretrained weights are not installed, or cannot be downloaded; the
            message names the file and the folder to place it in.
        BackboneError: A TF Hub handle or SavedModel cannot be loaded as configured (see `load_hub_backbone`).
        pipeline.backbones.keras_archive.KerasFileError: A .keras file that can't serve as configured.
    """
    kind = backbone_kind(name)
    given = sorted(option for option, value in kind_options.items() if value is not None)
    if kind == "hub":
        from pipeline.backbones.hub import load_hub_backbone

        if weights != "imagenet":
            raise ValueError(f"weights applies to registered backbones only; {name} holds its own weights")
        return load_hub_backbone(name, image_size=image_size, cache_dir=cache_dir, **kind_options)
    if kind == "keras_file":
        from pipeline.backbones.keras_file import load_keras_file_backbone

        return load_keras_file_backbone(name, image_size=image_size, cache_dir=cache_dir, **kind_options)
    if given:
        raise ValueError(
            f"{', '.join(given)} apply to TF Hub handles, SavedModel directories and .keras files, not to {name}"
        )
    backbone = _BUILDERS[name](image_size=image_size, cache_dir=Path(cache_dir), weights=weights)
    if backbone.block_names != BACKBONE_BLOCKS[name]:
        raise RuntimeError(f"{name} builds blocks {backbone.block_names}, names.py declares {BACKBONE_BLOCKS[name]}")
    return backbone

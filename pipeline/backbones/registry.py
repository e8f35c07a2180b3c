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
from pipeline.backbones.base import Backbone, group_layers, group_layers_at_cuts
from pipeline.backbones.errors import WeightsNotFoundError
from pipeline.backbones.names import BACKBONE_BLOCKS, BACKBONE_NAMES, backbone_kind

if TYPE_CHECKING:
    import keras


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
        raise WeightsNotFoundError(
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
        The backbone, every layer trainable (freezing is `pipeline.model.freezing`'s job).

    Raises:
        ValueError: `name` is none of the kinds (the message lists the registered names and the other forms),
            or an option is given for a kind it does not apply to.
        WeightsNotFoundError: The pretrained weights are not installed, or cannot be downloaded; the
            message names the file and the folder to place it in.
        BackboneError: A TF Hub handle or SavedModel cannot be loaded as configured (see `load_hub_backbone`).
        pipeline.backbones.errors.KerasFileError: A .keras file that can't serve as configured.
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

"""The `backbone` section: the pretrained network to start from, its weights and its input size."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator

from pipeline.backbones.names import BACKBONE_MIN_SIZES, BACKBONE_NAMES
from pipeline.params.common import Registered, Section


class BackboneParams(Section):
    """Which pretrained network to start from, with which weights, and the input size it sees."""

    name: Registered(BACKBONE_NAMES, "backbone") = "efficientnet_lite0"
    weights: str = Field(
        default="imagenet",
        description="imagenet (keras.applications: from KERAS_HOME/models), none (random initialisation), "
        "or the path of a Keras weights file.",
    )
    image_size: Annotated[int, Field(ge=32, le=1024)] = 96
    cache_dir: str = ".cache/backbones"

    @field_validator("image_size")
    @classmethod
    def _input_size_fits(cls, image_size: int, info: ValidationInfo) -> int:
        name = info.data.get("name")
        if name is not None and image_size < BACKBONE_MIN_SIZES[name]:
            raise ValueError(f"{name} takes inputs of at least {BACKBONE_MIN_SIZES[name]} px")
        return image_size

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, weights: str) -> str:
        if weights not in ("imagenet", "none") and not Path(weights).is_file():
            raise ValueError("not a file; allowed: imagenet, none, or the path of a Keras weights file")
        return weights

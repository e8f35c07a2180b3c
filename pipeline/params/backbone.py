"""The `backbone` section: the pretrained network to start from and its input size."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.backbones.names import BACKBONE_NAMES
from pipeline.params.common import Registered, Section


class BackboneParams(Section):
    """Which pretrained network to start from, and the input size it sees."""

    name: Registered(BACKBONE_NAMES, "backbone") = "efficientnet_lite0"
    image_size: Annotated[int, Field(ge=32, le=1024)] = 96
    cache_dir: str = ".cache/backbones"

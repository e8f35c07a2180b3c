"""Names of the registered backbones and their block groups, and the kind of any `backbone.name`, without TensorFlow.

Importable without TensorFlow. Why: params validation must reject an unknown backbone, or an unfreeze
stage deeper than the backbone, before TensorFlow loads. The block lists come from the architecture modules' own group
maps (which need no TensorFlow), and `pipeline.backbones.registry` checks at load time that the
built model has exactly these groups. `backbone.name` also takes a TF Hub handle, a SavedModel
directory or a `.keras` file; `backbone_kind` tells which, so validation and the registry agree.
"""

from __future__ import annotations

import os
from typing import Literal

from pipeline.backbones import efficientnet_lite
from pipeline.backbones.applications import APPLICATIONS

# name -> block groups top-down, as the registry builds them.
BACKBONE_BLOCKS: dict[str, tuple[str, ...]] = {
    **{
        name: tuple(group for group, _prefix in efficientnet_lite.block_groups(variant.stages))
        for name, variant in efficientnet_lite.LITE_VARIANTS.items()
    },
    **{name: spec.block_names for name, spec in APPLICATIONS.items()},
}
# name -> smallest square input the backbone takes.
# EfficientNet-Lite, every variant: 32 px is where its five stride-2 convolutions (the stem and four
# stages) reach a 1x1 feature map; the depth and width multipliers add no stride.
BACKBONE_MIN_SIZES: dict[str, int] = {
    **{name: 32 for name in efficientnet_lite.LITE_VARIANTS},
    **{name: spec.min_size for name, spec in APPLICATIONS.items()},
}
BACKBONE_NAMES: tuple[str, ...] = tuple(BACKBONE_BLOCKS)

BackboneKind = Literal["registered", "hub", "keras_file"]
HUB_URL_SCHEMES = ("http://", "https://")
# The one block of a TF Hub handle or SavedModel directory: its graph is opaque, so it freezes as a whole.
SAVED_MODEL_BLOCK = "saved_model"


def backbone_kind(name: str) -> BackboneKind:
    """Which kind of backbone `backbone.name` names.

    Args:
        name: The value of `backbone.name`.

    Returns:
        "registered": a name in `BACKBONE_NAMES`; "hub": an http(s):// URL (a TF Hub handle) or a local
        directory (a SavedModel, as tensorflow_hub resolves it); "keras_file": a path ending in `.keras`.

    Raises:
        ValueError: None of these; the message lists the registered names and the other two forms.
    """
    if name in BACKBONE_NAMES:
        return "registered"
    if name.startswith(HUB_URL_SCHEMES) or os.path.isdir(name):
        return "hub"
    if name.endswith(".keras"):
        return "keras_file"
    looks_like_a_path = os.sep in name or name.startswith(".")
    problem = f"no directory {name} exists" if looks_like_a_path else f"unknown backbone {name!r}"
    raise ValueError(
        f"{problem}; registered backbones: {', '.join(BACKBONE_NAMES)}; or a TF Hub handle (an http:// or "
        "https:// URL), a SavedModel directory, or a .keras file"
    )

"""Names of the registered backbones and their block groups, and which kind of backbone a name is.

Importable without TensorFlow. Why: params validation must reject an unknown backbone, or an unfreeze
stage deeper than the backbone, before TensorFlow loads. The block lists come from the architecture modules' own group
maps (which need no TensorFlow), and `pipeline.backbones.registry` checks at load time that the
built model has exactly these groups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pipeline.backbones import efficientnet_lite
from pipeline.backbones.applications import APPLICATIONS

# name -> block groups top-down, as the registry builds them.
BACKBONE_BLOCKS: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": tuple(group for group, _prefix in efficientnet_lite.block_groups()),
    **{name: spec.block_names for name, spec in APPLICATIONS.items()},
}
# name -> smallest square input the backbone takes.
BACKBONE_MIN_SIZES: dict[str, int] = {
    "efficientnet_lite0": 32,
    **{name: spec.min_size for name, spec in APPLICATIONS.items()},
}
BACKBONE_NAMES: tuple[str, ...] = tuple(BACKBONE_BLOCKS)

BackboneKind = Literal["registered", "hub", "keras_file"]


def backbone_kind(name: str) -> BackboneKind:
    """registered: a name in BACKBONE_NAMES; hub: an http(s):// URL, or a local directory (a SavedModel,
    as tensorflow_hub resolves it); keras_file: a path ending in .keras. Raises ValueError otherwise,
    listing the registered names and the two other forms."""
    if name in BACKBONE_NAMES:
        return "registered"
    if name.startswith(("http://", "https://")):
        return "hub"
    if name.endswith(".keras"):
        return "keras_file"
    if Path(name).is_dir():
        return "hub"
    raise ValueError(
        f"unknown backbone {name!r}; registered backbones: {', '.join(BACKBONE_NAMES)}; or a TF Hub handle (an "
        "http(s):// URL or a local SavedModel directory), or the path of a local .keras file"
    )

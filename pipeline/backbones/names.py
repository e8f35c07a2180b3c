"""Names of the registered backbones and their block groups, importable without TensorFlow.

Why: params validation must reject an unknown backbone, or an unfreeze stage deeper than the
backbone, before TensorFlow loads. The block lists come from the architecture modules' own group
maps (which need no TensorFlow), and `pipeline.backbones.registry` checks at load time that the
built model has exactly these groups.
"""

from __future__ import annotations

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

"""Names of the registered backbones and their block groups, importable without TensorFlow.

Why: params validation must reject an unknown backbone, or an unfreeze stage deeper than the
backbone, before TensorFlow loads. The block lists come from the architecture modules' own group
maps (which need no TensorFlow), and `pipeline.backbones.registry` checks at load time that the
built model has exactly these groups.
"""

from __future__ import annotations

from pipeline.backbones import efficientnet_lite

# name -> block groups top-down, as the registry builds them.
BACKBONE_BLOCKS: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": tuple(group for group, _prefix in efficientnet_lite.block_groups()),
}
BACKBONE_NAMES: tuple[str, ...] = tuple(BACKBONE_BLOCKS)

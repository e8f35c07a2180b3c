"""Names of the registered backbones, importable without TensorFlow.

Why: params validation must reject an unknown backbone, or an unfreeze stage deeper than the
backbone, before TensorFlow loads; so names and block counts live apart from the builders in
`pipeline.backbones.registry`, which checks at import that the two agree.
"""

from __future__ import annotations

# name -> block groups top-down, as the registry builds them.
BACKBONE_BLOCKS: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": (
        "top",
        "block7",
        "block6",
        "block5",
        "block4",
        "block3",
        "block2",
        "block1",
        "stem",
    ),
}
BACKBONE_NAMES: tuple[str, ...] = tuple(BACKBONE_BLOCKS)

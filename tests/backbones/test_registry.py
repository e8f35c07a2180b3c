"""pipeline/backbones/registry.py: `load_backbone` dispatches a name to its kind and builds its block groups."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.backbones import efficientnet_lite
from pipeline.backbones.legacy_torch import load_legacy_state_dict
from pipeline.backbones.names import BACKBONE_BLOCKS, BACKBONE_MIN_SIZES
from pipeline.backbones.registry import load_backbone

LITE1, LITE2 = efficientnet_lite.LITE1, efficientnet_lite.LITE2


def test_lite0_block_groups_cover_every_layer_top_down(tmp_path) -> None:
    backbone = load_backbone("efficientnet_lite0", image_size=64, cache_dir=tmp_path)
    assert backbone.block_names == BACKBONE_BLOCKS["efficientnet_lite0"]
    grouped = [name for group in backbone.blocks_top_down for name in group.layer_names]
    assert sorted(grouped) == sorted(layer.name for layer in backbone.model.layers[1:])
    groups = {group.name: group.layer_names for group in backbone.blocks_top_down}
    assert groups["top"] == ("top_conv", "top_bn", "top_activation")
    assert groups["block7"][0] == "block7a_expand_conv"
    assert groups["block6"][-1] == "block6d_add"
    assert groups["stem"] == ("stem_conv", "stem_bn", "stem_activation")


@pytest.mark.parametrize(
    ("variant", "last_block", "block6_layers", "head_input"),
    [(LITE1, 20, 44, 320), (LITE2, 20, 44, 352)],
    ids=lambda value: getattr(value, "name", None),
)
def test_scaled_lite_block_groups_cover_every_layer_top_down(
    tmp_path, variant, last_block, block6_layers, head_input
) -> None:
    backbone = load_backbone(variant.name, image_size=64, cache_dir=tmp_path)
    assert backbone.model.name == variant.name
    assert backbone.block_names == BACKBONE_BLOCKS[variant.name] == BACKBONE_BLOCKS["efficientnet_lite0"]
    assert BACKBONE_MIN_SIZES[variant.name] == 32
    grouped = [name for group in backbone.blocks_top_down for name in group.layer_names]
    assert sorted(grouped) == sorted(layer.name for layer in backbone.model.layers[1:])
    groups = {group.name: group.layer_names for group in backbone.blocks_top_down}
    assert groups["top"] == ("top_conv", "top_bn", "top_activation")
    assert groups["block7"][0] == "block7a_expand_conv"
    # block6a has no residual add (it changes width and stride), block6b..e do: 8 + 4 * 9 layers.
    assert len(groups["block6"]) == block6_layers
    assert groups["block6"][-1] == "block6e_add"
    assert groups["stem"] == ("stem_conv", "stem_bn", "stem_activation")
    # The registry loaded this variant's own file: its last block is block7a.
    state = load_legacy_state_dict(efficientnet_lite.weights_file(variant.weights))
    kernel = state[f"_blocks.{last_block}._project_conv.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(backbone.model.get_layer("block7a_project_conv").get_weights()[0], kernel)
    assert backbone.model.get_layer("top_conv").get_weights()[0].shape == (1, 1, head_input, 1280)
    assert [path.name for path in tmp_path.iterdir()] == [
        f"{variant.name}_imagenet_notop_{variant.weights.sha256[:16]}.weights.h5"
    ]


def test_unknown_backbone_lists_registered_ones(tmp_path) -> None:
    with pytest.raises(
        ValueError,
        match="unknown backbone 'resnet9000'; registered backbones: efficientnet_lite0, efficientnet_lite1, "
        "efficientnet_lite2, ",
    ):
        load_backbone("resnet9000", image_size=64, cache_dir=tmp_path)

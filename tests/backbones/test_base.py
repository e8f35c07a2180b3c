"""pipeline/backbones/base.py: layers grouped into blocks by prefix, and the layers every path crosses."""

from __future__ import annotations

import pytest

from pipeline.backbones import efficientnet_lite
from pipeline.backbones.base import cut_flags, group_layers


def test_layer_outside_every_group_is_an_error() -> None:
    model = efficientnet_lite.build_efficientnet_lite(input_shape=(32, 32, 3), include_top=False)
    with pytest.raises(ValueError, match="layer 'stem_conv' of efficientnet_lite0 belongs to no block group"):
        group_layers(model, [("top", "top_")])


def test_cut_flags_mark_only_the_layers_every_path_crosses() -> None:
    # 0 -> 1 -> 2 -> 3(1, 2) -> 4: the skip from 1 to 3 jumps over 2.
    assert cut_flags([[], [0], [1], [1, 2], [3]]) == [True, True, False, True, True]

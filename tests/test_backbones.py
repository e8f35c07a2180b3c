"""The EfficientNet-Lite0 port: ImageNet predictions on real photos, block groups, weight cache."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pipeline.backbones import efficientnet_lite
from pipeline.backbones.legacy_torch import load_legacy_state_dict
from pipeline.backbones.names import BACKBONE_BLOCKS, backbone_kind
from pipeline.backbones.registry import group_layers, load_backbone

EGYPTIAN_CAT, TABBY, TIGER_CAT, ESPRESSO = 285, 281, 282, 967


@pytest.fixture(scope="module")
def imagenet_model(tmp_path_factory):
    model = efficientnet_lite.build_efficientnet_lite(input_shape=(224, 224, 3), include_top=True)
    efficientnet_lite.load_imagenet_weights(model, cache_dir=tmp_path_factory.mktemp("weights"))
    return model


def _top_class(model, image: np.ndarray) -> tuple[int, float]:
    scale, offset = efficientnet_lite.preprocess_scale_offset()
    pixels = tf.image.resize(image[np.newaxis].astype("float32"), (224, 224)).numpy()
    probabilities = model.predict(pixels * scale + offset, verbose=0)[0]
    return int(probabilities.argmax()), float(probabilities.max())


def test_chelsea_is_a_cat(imagenet_model) -> None:
    from skimage import data

    label, probability = _top_class(imagenet_model, data.chelsea())
    assert label in (EGYPTIAN_CAT, TABBY, TIGER_CAT)
    assert label == EGYPTIAN_CAT
    assert probability > 0.5


def test_coffee_is_espresso(imagenet_model) -> None:
    from skimage import data

    label, probability = _top_class(imagenet_model, data.coffee())
    assert label == ESPRESSO
    assert probability > 0.5


def test_a_layer_without_pretrained_weights_is_an_error() -> None:
    state = load_legacy_state_dict(efficientnet_lite.weights_file())
    weights = efficientnet_lite.keras_weights_from_torch(state)
    model = efficientnet_lite.build_efficientnet_lite(input_shape=(32, 32, 3), include_top=False)
    missing = dict(weights)
    del missing["block6b_dwconv"]
    with pytest.raises(ValueError, match="no pretrained weights for layer 'block6b_dwconv'"):
        efficientnet_lite.apply_weights(model, missing)
    wrong = dict(weights)
    wrong["top_conv"] = [np.zeros((1, 1, 320, 1000), np.float32)]
    with pytest.raises(ValueError, match=r"layer 'top_conv' expects shapes \[\(1, 1, 320, 1280\)\]"):
        efficientnet_lite.apply_weights(model, wrong)


def test_converted_weights_are_cached_and_reused(tmp_path) -> None:
    first = efficientnet_lite.build_efficientnet_lite(input_shape=(32, 32, 3), include_top=False)
    cache_file = efficientnet_lite.load_imagenet_weights(first, cache_dir=tmp_path)
    assert cache_file.parent == tmp_path
    assert cache_file.name.endswith(".weights.h5")
    stamp = cache_file.stat().st_mtime_ns
    second = efficientnet_lite.build_efficientnet_lite(input_shape=(32, 32, 3), include_top=False)
    assert efficientnet_lite.load_imagenet_weights(second, cache_dir=tmp_path) == cache_file
    assert cache_file.stat().st_mtime_ns == stamp
    for left, right in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)


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


def test_unknown_backbone_lists_registered_ones(tmp_path) -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown backbone 'resnet9000'; registered backbones: efficientnet_lite0, .*; or a TF Hub handle \(an "
        r"http\(s\):// URL or a local SavedModel directory\), or the path of a local .keras file$",
    ):
        load_backbone("resnet9000", image_size=64, cache_dir=tmp_path)


def test_backbone_kind_follows_the_name(tmp_path) -> None:
    assert backbone_kind("efficientnet_lite0") == "registered"
    assert backbone_kind("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5") == "hub"
    assert backbone_kind(str(tmp_path)) == "hub"
    assert backbone_kind("models/model.keras") == "keras_file"
    with pytest.raises(ValueError, match="unknown backbone 'no_such_folder'"):
        backbone_kind("no_such_folder")


def test_layer_outside_every_group_is_an_error() -> None:
    model = efficientnet_lite.build_efficientnet_lite(input_shape=(32, 32, 3), include_top=False)
    with pytest.raises(ValueError, match="layer 'stem_conv' of efficientnet_lite0 belongs to no block group"):
        group_layers(model, [("top", "top_")])

"""Freezing: which layers train in each phase, the BatchNorm policies, and the trainable-layer map."""

from __future__ import annotations

import keras
import pytest

from pipeline.model.freezing import bn_mode, layer_map, save_layer_map, set_trainable_blocks, trainable_layer_names
from pipeline.model.head import build_head
from pipeline.params.head import HeadParams


def _classifier(tiny_backbone):
    return build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)


def test_zero_blocks_leaves_only_the_head_trainable(tiny_backbone) -> None:
    classifier = _classifier(tiny_backbone)
    state = set_trainable_blocks(classifier.model, classifier.backbone.blocks_top_down, trainable_blocks=0)
    assert state == {"top": False, "block2": False, "block1": False, "stem": False}
    assert trainable_layer_names(classifier.model) == ["head_predictions"]


def test_top_two_blocks_train_without_their_batch_norm(tiny_backbone) -> None:
    classifier = _classifier(tiny_backbone)
    state = set_trainable_blocks(classifier.model, classifier.backbone.blocks_top_down, trainable_blocks=2)
    assert state == {"top": True, "block2": True, "block1": False, "stem": False}
    assert trainable_layer_names(classifier.model) == ["block2a_conv", "top_conv", "head_predictions"]
    batch_norms = [layer for layer in classifier.model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms
    assert not any(layer.trainable for layer in batch_norms)


@pytest.mark.parametrize("policy", ["affine", "trainable"])
def test_batch_norm_of_unfrozen_blocks_trains_under_its_policy(tiny_backbone, policy: str) -> None:
    classifier = _classifier(tiny_backbone)
    set_trainable_blocks(classifier.model, classifier.backbone.blocks_top_down, trainable_blocks=1, bn_policy=policy)
    assert trainable_layer_names(classifier.model) == ["top_conv", "top_bn", "head_predictions"]
    assert bn_mode(classifier.model.get_layer("top_bn")) == policy
    # gamma and beta train; the moving statistics are never gradient-trained variables.
    assert [weight.name for weight in classifier.model.get_layer("top_bn").trainable_weights] == ["gamma", "beta"]
    assert bn_mode(classifier.model.get_layer("block2a_bn")) == "frozen"


def test_affine_policy_is_undone_by_the_next_phase(tiny_backbone) -> None:
    classifier = _classifier(tiny_backbone)
    groups = classifier.backbone.blocks_top_down
    set_trainable_blocks(classifier.model, groups, trainable_blocks=2, bn_policy="affine")
    assert type(classifier.model.get_layer("top_bn")).__name__ == "AffineBatchNormalization"
    set_trainable_blocks(classifier.model, groups, trainable_blocks=2, bn_policy="frozen")
    assert type(classifier.model.get_layer("top_bn")) is keras.layers.BatchNormalization
    assert not classifier.model.get_layer("top_bn").trainable


def test_unknown_bn_policy_lists_the_allowed_ones(tiny_backbone) -> None:
    classifier = _classifier(tiny_backbone)
    with pytest.raises(ValueError, match="unknown bn_policy 'train_bn'; allowed: frozen, affine, trainable"):
        set_trainable_blocks(
            classifier.model, classifier.backbone.blocks_top_down, trainable_blocks=1, bn_policy="train_bn"
        )


def test_layer_map_lists_block_trainability_size_and_multiplier(tiny_backbone, tmp_path) -> None:
    classifier = _classifier(tiny_backbone)
    groups = classifier.backbone.blocks_top_down
    set_trainable_blocks(classifier.model, groups, trainable_blocks=2, bn_policy="affine")
    rows = layer_map(
        classifier.model,
        groups,
        phase=1,
        phase_name="unfreeze_top_2",
        lr_multipliers={"top_conv": 0.5, "top_bn": 0.5, "block2a_conv": 0.25, "block2a_bn": 0.25},
    )
    by_layer = {row.layer: row for row in rows}
    assert list(by_layer) == [
        "stem_conv",
        "stem_bn",
        "block1a_conv",
        "block1a_bn",
        "block2a_conv",
        "block2a_bn",
        "top_conv",
        "top_bn",
        "head_predictions",
    ]
    top_conv, top_bn, stem_conv = by_layer["top_conv"], by_layer["top_bn"], by_layer["stem_conv"]
    assert (top_conv.block, top_conv.trainable, top_conv.parameters, top_conv.lr_multiplier) == (
        "top",
        True,
        3 * 3 * 8 * 16,
        0.5,
    )
    assert (top_bn.layer_type, top_bn.batch_norm, top_bn.parameters, top_bn.trainable_parameters) == (
        "BatchNormalization",
        "affine",
        4 * 16,
        2 * 16,
    )
    assert (stem_conv.block, stem_conv.trainable, stem_conv.lr_multiplier) == ("stem", False, 0.0)
    assert by_layer["head_predictions"].block == "head"
    assert by_layer["head_predictions"].lr_multiplier == 1.0
    save_layer_map(rows, tmp_path / "map.csv")
    lines = (tmp_path / "map.csv").read_text().splitlines()
    assert lines[0] == (
        "phase,phase_name,layer,block,layer_type,trainable,parameters,trainable_parameters,lr_multiplier,batch_norm"
    )
    assert lines[7] == "1,unfreeze_top_2,top_conv,top,Conv2D,True,1152,1152,0.5,"


def test_refreezing_after_a_deeper_phase(tiny_backbone) -> None:
    classifier = _classifier(tiny_backbone)
    groups = classifier.backbone.blocks_top_down
    set_trainable_blocks(classifier.model, groups, trainable_blocks=4)
    set_trainable_blocks(classifier.model, groups, trainable_blocks=1)
    assert trainable_layer_names(classifier.model) == ["top_conv", "head_predictions"]


def test_out_of_range_block_count_names_the_blocks(tiny_backbone) -> None:
    classifier = _classifier(tiny_backbone)
    expected = r"trainable_blocks is 5; the backbone has 4 blocks \(top, block2, block1, stem\)"
    with pytest.raises(ValueError, match=expected):
        set_trainable_blocks(classifier.model, classifier.backbone.blocks_top_down, trainable_blocks=5)


def test_dropout_of_frozen_blocks_runs_in_inference_mode_until_unfrozen() -> None:
    from pipeline.backbones.base import BlockGroup
    from pipeline.model.freezing import restore_layer_classes

    inputs = keras.Input((64,))
    tensor = keras.layers.Dense(64, name="low")(inputs)
    tensor = keras.layers.Dropout(0.5, seed=1, name="low_dropout")(tensor)
    tensor = keras.layers.GaussianNoise(1.0, seed=1, name="low_noise")(tensor)
    model = keras.Model(inputs, keras.layers.Dense(4, name="high")(tensor))
    groups = (BlockGroup("high", ("high",)), BlockGroup("low", ("low", "low_dropout", "low_noise")))
    features = keras.ops.ones((2, 64))

    set_trainable_blocks(model, groups, trainable_blocks=1)
    assert type(model.get_layer("low_dropout")).__name__ == "FrozenDropout"
    inference = keras.ops.convert_to_numpy(model(features, training=False))
    assert (keras.ops.convert_to_numpy(model(features, training=True)) == inference).all()

    set_trainable_blocks(model, groups, trainable_blocks=2)
    assert type(model.get_layer("low_dropout")) is keras.layers.Dropout
    assert not (keras.ops.convert_to_numpy(model(features, training=True)) == inference).all()

    set_trainable_blocks(model, groups, trainable_blocks=0)
    restore_layer_classes(model)
    assert type(model.get_layer("low_noise")) is keras.layers.GaussianNoise
    assert not model.get_layer("low_noise").trainable

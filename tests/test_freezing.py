"""Freezing: which layers train in each phase, and BatchNormalization never does."""

from __future__ import annotations

import keras
import pytest

from pipeline.freezing import set_trainable_blocks, trainable_layer_names
from pipeline.head import attach_head


def _classifier(tiny_backbone):
    return attach_head(tiny_backbone(), num_classes=3, pooling="avg", dropout=0.0, seed=0)


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


def test_batch_norm_can_be_left_trainable_on_request(tiny_backbone) -> None:
    classifier = _classifier(tiny_backbone)
    set_trainable_blocks(
        classifier.model, classifier.backbone.blocks_top_down, trainable_blocks=1, freeze_batch_norm=False
    )
    assert trainable_layer_names(classifier.model) == ["top_conv", "top_bn", "head_predictions"]


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

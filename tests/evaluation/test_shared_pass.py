"""One test pass for the model and the linear probe: split where the weights stop being the pretrained ones."""

from __future__ import annotations

import functools

import numpy as np

from pipeline.evaluation.baselines import frozen_feature_model
from pipeline.evaluation.shared_pass import model_and_probe_pass, shared_cut
from pipeline.model import export
from pipeline.model.head import build_head
from pipeline.params.head import HeadParams
from pipeline.params.optimizer import AdamParams
from pipeline.params.schedule import ConstantParams
from pipeline.training.recipe import Phase
from tests.conftest import build_tiny_backbone, fine_tune_tiny, make_images

IMAGE_SIZE = 16
_phase = functools.partial(Phase, optimizer=AdamParams(name="adam"), schedule=ConstantParams(name="constant"))


def _fine_tuned(trainable_blocks: int):
    classifier = build_head(build_tiny_backbone(IMAGE_SIZE), HeadParams(dropout=0.0), num_classes=3, seed=0)
    phases = [_phase("frozen", 0, 1, 0.01)]
    if trainable_blocks:
        phases.append(_phase("unfreeze", trainable_blocks, 1, 0.01, bn_policy="trainable"))
    fine_tune_tiny(classifier, phases, image_size=IMAGE_SIZE)
    model = export.end_to_end_model(classifier.model, classifier.backbone.make_preprocessing(), image_size=IMAGE_SIZE)
    return classifier, model


def test_the_cut_is_below_the_blocks_fine_tuning_changed() -> None:
    pretrained = build_tiny_backbone(IMAGE_SIZE)  # the same seed: the weights fine-tuning started from
    groups = pretrained.blocks_top_down
    for trainable, expected in ((0, groups[0].layer_names[-1]), (1, groups[1].layer_names[-1]), (len(groups), None)):
        classifier, _ = _fine_tuned(trainable)
        assert shared_cut(classifier.model, pretrained) == expected, trainable


def test_one_pass_gives_the_models_probabilities_and_the_pretrained_features() -> None:
    pretrained = build_tiny_backbone(IMAGE_SIZE)
    _, model = _fine_tuned(2)
    images, labels = make_images(20, 3, seed=5)
    probabilities, features, cut = model_and_probe_pass(
        model, pretrained, images, labels, pooling="avg", image_size=IMAGE_SIZE, batch_size=8
    )
    assert cut == pretrained.blocks_top_down[2].layer_names[-1]
    from pipeline.data.datasets import image_dataset

    expected = model.predict(image_dataset(images, labels, image_size=IMAGE_SIZE, batch_size=8), verbose=0)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    plain = frozen_feature_model(pretrained, pooling="avg").predict(
        image_dataset(
            images, labels, image_size=IMAGE_SIZE, batch_size=8, preprocessing=pretrained.make_preprocessing()
        ),
        verbose=0,
    )
    np.testing.assert_allclose(features, plain, rtol=1e-5, atol=1e-6)


def test_nothing_shared_when_every_block_changed() -> None:
    pretrained = build_tiny_backbone(IMAGE_SIZE)
    _, model = _fine_tuned(len(pretrained.blocks_top_down))
    images, labels = make_images(6, 3, seed=5)
    probabilities, features, cut = model_and_probe_pass(
        model, pretrained, images, labels, pooling="avg", image_size=IMAGE_SIZE, batch_size=4
    )
    assert (features, cut) == (None, None)
    assert probabilities.shape == (6, 3)

"""pipeline/training/features.py: training the head on cached frozen features is training it on images.

The default head of params.yaml is the hard case for the cache: it draws two dropout masks per step (on the
pooled features and after the hidden layer) and normalises its hidden layer with the statistics of each
batch. The weights still come out bit for bit the same on both paths, because everything random or
batch-dependent happens identically:
- the training shuffle: `array_dataset` (cached features) and `image_dataset` (images) shuffle with the same
  seed, so each step sees the same examples in the same order;
- the dropout masks: the head's Dropout layers are seeded, and their seed generators advance once per
  training step on either path, so each step draws the same masks for the same examples;
- the features themselves: the frozen backbone runs in inference mode, so the pooled features cached once
  are what the full model computes at every step.
Other tests of the cache (its budget, the flip views, cuts below the head) are in tests/training/test_recipe.py.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from pipeline.params import load
from pipeline.params.optimizer import AdamParams
from pipeline.params.schedule import ConstantParams
from pipeline.training.recipe import Phase
from tests.conftest import build_tiny_backbone, fine_tune_tiny

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 16
FROZEN = Phase("frozen", 0, 2, 0.01, optimizer=AdamParams(name="adam"), schedule=ConstantParams(name="constant"))
# What the frozen phase trains: the head's layers (the hidden Dense has no bias, its BatchNorm follows it).
HEAD_WEIGHTS = [
    "head_bn_1/beta",
    "head_bn_1/gamma",
    "head_bn_1/moving_mean",
    "head_bn_1/moving_variance",
    "head_dense_1/kernel",
    "head_predictions/bias",
    "head_predictions/kernel",
]


def _default_head_classifier():
    """The tiny backbone under the head section of the repository's params.yaml, seed 0.

    The one place this file builds a classifier, so that a change of the head factory's arguments is a change
    here only.
    """
    from pipeline.model.head import build_head

    head = load(REPO_ROOT / "params.yaml").head
    keras.utils.set_random_seed(0)
    return build_head(build_tiny_backbone(IMAGE_SIZE, seed=0), head, num_classes=3, seed=0)


def _weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {variable.path: np.array(variable) for variable in model.weights}


def _train_frozen_phase(*, cache_bytes: int, dropout: bool = True):
    """The frozen phase on the tiny splits; returns the weights before and after, and the history."""
    classifier = _default_head_classifier()
    if not dropout:
        for layer in classifier.model.layers:
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
    before = _weights(classifier.model)
    history = fine_tune_tiny(classifier, [FROZEN], image_size=IMAGE_SIZE, cache_bytes=cache_bytes)
    return before, _weights(classifier.model), history


def test_the_default_head_learns_the_same_weights_on_cached_features_and_on_images() -> None:
    head = load(REPO_ROOT / "params.yaml").head
    # The premise: the default head drops out twice per step and normalises with batch statistics.
    assert (head.dropout, head.hidden_units, head.hidden_dropout_rates(), head.batch_norm) == (
        0.2,
        [256],
        [0.2],
        "before",
    )

    before, cached, cached_history = _train_frozen_phase(cache_bytes=1 << 30)
    _, on_images, image_history = _train_frozen_phase(cache_bytes=0)

    assert [phase.cached_features for phase in cached_history.phases] == [True]
    assert [phase.cached_features for phase in image_history.phases] == [False]
    assert cached_history.rows == image_history.rows
    assert sorted(cached) == sorted(on_images)
    for path, value in cached.items():
        np.testing.assert_array_equal(value, on_images[path], err_msg=path)
    # Not a vacuous equality: the phase trained the head (BatchNorm statistics included) and nothing else ...
    assert sorted(path for path in cached if not np.array_equal(cached[path], before[path])) == HEAD_WEIGHTS
    # ... and the masks were drawn and mattered: without them the same run ends elsewhere.
    _, without_dropout, _ = _train_frozen_phase(cache_bytes=0, dropout=False)
    for path in HEAD_WEIGHTS:
        assert not np.array_equal(without_dropout[path], on_images[path]), path

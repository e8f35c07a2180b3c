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
from tests.conftest import build_tiny_backbone, fine_tune_tiny, tiny_splits

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


def _frozen_prefix() -> tuple[object, keras.Model]:
    """The default head's classifier and its frozen prefix below the top 2 groups."""
    from pipeline.training.features import cut_tensor

    classifier = _default_head_classifier()
    return classifier, keras.Model(classifier.model.input, cut_tensor(classifier, 2))


def test_the_one_time_pass_runs_at_the_training_batch_size(monkeypatch) -> None:
    # bench/frozen_pass.py found no larger inference batch faster on a CPU, and the batch size changes the last
    # bit of some activations (CPU convolutions pick their kernels by shape): the pass keeps the training batch.
    from pipeline.training import features

    passes: list[tuple[str, int, int]] = []
    original = features._forward_pass

    def noting(model, inputs, *, batch_size, jit_compile=None):
        rows = len(inputs[:batch_size]) if isinstance(inputs, np.ndarray) else int(next(iter(inputs))[0].shape[0])
        passes.append((model.output._keras_history.operation.name, batch_size, rows))
        return original(model, inputs, batch_size=batch_size, jit_compile=jit_compile)

    monkeypatch.setattr(features, "_forward_pass", noting)
    classifier, _prefix = _frozen_prefix()
    train, val = tiny_splits()
    factory = features.PhaseDataFactory(
        classifier,
        train=train,
        val=val,
        inputs=features.InputSettings(image_size=IMAGE_SIZE, batch_size=16, seed=0, cache_limit_bytes=1 << 30),
        deepest_trainable_blocks=2,
    )
    factory.for_phase(0)
    # The images' pass to the base cut (train, then val), then the frozen phase's segment to the pooled features.
    base, pooled = classifier.backbone.blocks_top_down[2].layer_names[-1], classifier.pooled._keras_history[0].name
    assert passes == [(base, 16, 16), (base, 16, 16), (pooled, 16, 16), (pooled, 16, 16)]


def test_the_one_time_pass_uses_xla_as_keras_chooses_for_the_model_unless_told(monkeypatch) -> None:
    import tensorflow as tf

    from pipeline.training import features

    _classifier, prefix = _frozen_prefix()
    asked: list[object] = []
    function = tf.function

    def noting(*arguments, **options):
        # Only the pass's own function: Keras' layers make tf.functions of their own.
        if arguments and getattr(arguments[0], "__module__", None) == features.__name__:
            asked.append(options.get("jit_compile"))
        return function(*arguments, **options)

    monkeypatch.setattr(features.tf, "function", noting)
    rows = np.random.default_rng(0).uniform(-1, 1, (3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    chosen = features._forward_pass(prefix, rows, batch_size=2)
    compiled = features._forward_pass(prefix, rows, batch_size=2, jit_compile=True)
    plain = features._forward_pass(prefix, rows, batch_size=2, jit_compile=False)
    assert asked == [prefix.jit_compile, True, False]
    np.testing.assert_array_equal(chosen, compiled if prefix.jit_compile else plain)
    # XLA fuses the same inference arithmetic differently: equal up to float32 rounding.
    np.testing.assert_allclose(compiled, plain, rtol=0, atol=1e-5)

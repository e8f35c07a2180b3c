"""Fine-tuning on a GPU: mixed precision with the feature cache, XLA with layer-wise LRs, MirroredStrategy.

Marked `gpu`: skipped, with the reason, where TensorFlow sees no GPU (tests/conftest.py). On a GPU machine
`make test` runs them with the rest.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.model.head import build_head
from pipeline.params.head import HeadParams
from pipeline.params.optimizer import AdamParams
from pipeline.params.schedule import ConstantParams
from pipeline.training.recipe import Phase
from tests.conftest import fine_tune_tiny

pytestmark = pytest.mark.gpu

IMAGE_SIZE = 16
_run = functools.partial(fine_tune_tiny, image_size=IMAGE_SIZE)


def _phase(name: str, blocks: int, epochs: int, learning_rate: float, **settings: object) -> Phase:
    settings.setdefault("optimizer", AdamParams(name="adam"))
    settings.setdefault("schedule", ConstantParams(name="constant"))
    return Phase(name, blocks, epochs, learning_rate, **settings)


@pytest.fixture
def mixed_float16() -> object:
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_one_step_under_mixed_float16_with_the_feature_cache(tiny_backbone, mixed_float16: object) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    before = [np.array(weight) for weight in classifier.model.get_layer(index=-1).get_weights()]
    history = _run(classifier, [_phase("frozen", 0, 1, 0.01)], batch_size=96)
    record = history.phases[0]
    assert (record.cached_features, record.precision) == (True, "mixed_float16")
    assert math.isfinite(history.rows[0]["loss"])
    # The head's float32 master weights took the step (loss scaling did not skip it as an overflow).
    after = classifier.model.get_layer(index=-1).get_weights()
    assert all(not np.array_equal(old, new) for old, new in zip(before, after, strict=True))
    assert classifier.model.output.dtype == "float32"


def test_xla_with_layer_wise_learning_rates(tiny_backbone) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    phases = [_phase("frozen", 0, 1, 0.01), _phase("unfreeze_top_2", 2, 1, 0.005, lr_decay_per_block=4.0)]
    history = _run(classifier, phases, jit_compile=True)
    assert [(record.xla, record.xla_reason) for record in history.phases] == [
        (True, "device.jit_compile is true"),
        (True, "device.jit_compile is true"),
    ]
    assert all(math.isfinite(row["loss"]) for row in history.rows)


def test_mirrored_strategy_on_every_visible_gpu_with_the_cached_sub_model(tiny_backbone) -> None:
    gpus = tf.config.list_logical_devices("GPU")
    strategy = tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
    with strategy.scope():
        classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
        history = _run(classifier, [_phase("frozen", 0, 1, 0.01), _phase("unfreeze_top_1", 1, 1, 0.005)])
    assert [(record.cached_features, record.replicas) for record in history.phases] == [
        (True, len(gpus)),
        (True, len(gpus)),
    ]
    assert all(math.isfinite(row["loss"]) for row in history.rows)

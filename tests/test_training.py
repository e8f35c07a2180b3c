"""The fine-tune recipe: what each phase changes, the global epoch axis, and the feature cache."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.features import ImageSplit, cut_tensor
from pipeline.head import attach_head
from pipeline.training import Phase, UnfreezeStage, fine_tune, plan_phases
from tests.conftest import make_images

IMAGE_SIZE = 16


def _splits() -> tuple[ImageSplit, ImageSplit]:
    train_images, train_labels = make_images(96, 3, seed=1)
    val_images, val_labels = make_images(30, 3, seed=2)
    return ImageSplit(train_images, train_labels), ImageSplit(val_images, val_labels)


def _snapshot(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.array(value) for value in layer.get_weights()] for layer in model.layers if layer.weights}


def _run(classifier, phases, *, cache_bytes: int = 1 << 30):
    train, val = _splits()
    return fine_tune(
        classifier,
        train=train,
        val=val,
        phases=phases,
        optimizer="adam",
        batch_size=16,
        image_size=IMAGE_SIZE,
        seed=0,
        feature_cache_bytes=cache_bytes,
        verbose=0,
    )


def _changed(before, after, layer: str) -> list[bool]:
    return [not np.array_equal(old, new) for old, new in zip(before[layer], after[layer], strict=True)]


def test_plan_phases_scales_the_base_learning_rate() -> None:
    phases = plan_phases(
        frozen_epochs=3,
        unfreeze=[UnfreezeStage(blocks=2, epochs=2, lr_factor=0.1), UnfreezeStage(blocks=4, epochs=1, lr_factor=0.01)],
        base_learning_rate=0.002,
    )
    assert phases == [
        Phase("frozen", 0, 3, 0.002),
        Phase("unfreeze_top_2", 2, 2, 0.002 * 0.1),
        Phase("unfreeze_top_4", 4, 1, 0.002 * 0.01),
    ]


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0], ids=["cached", "images"])
def test_frozen_phase_changes_only_the_head(tiny_backbone, cache_bytes: int) -> None:
    classifier = attach_head(tiny_backbone(), num_classes=3, pooling="avg", dropout=0.2, seed=0)
    before = _snapshot(classifier.model)
    history = _run(classifier, [Phase("frozen", 0, 2, 0.01)], cache_bytes=cache_bytes)
    after = _snapshot(classifier.model)
    assert history.phases[0].cached_features is bool(cache_bytes)
    for layer in before:
        if layer == "head_predictions":
            assert all(_changed(before, after, layer))
        else:
            assert not any(_changed(before, after, layer)), layer


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0], ids=["cached", "images"])
def test_unfreeze_phase_trains_top_blocks_and_keeps_the_rest_bit_identical(tiny_backbone, cache_bytes: int) -> None:
    classifier = attach_head(tiny_backbone(), num_classes=3, pooling="avg", dropout=0.0, seed=0)
    _run(classifier, [Phase("frozen", 0, 1, 0.01)], cache_bytes=cache_bytes)
    before = _snapshot(classifier.model)
    _run(classifier, [Phase("unfreeze_top_2", 2, 2, 0.01)], cache_bytes=cache_bytes)
    after = _snapshot(classifier.model)
    assert _changed(before, after, "top_conv") == [True]
    assert _changed(before, after, "block2a_conv") == [True]
    assert _changed(before, after, "head_predictions") == [True, True]
    for layer in ("block1a_conv", "stem_conv"):
        assert _changed(before, after, layer) == [False]
    # gamma, beta, moving mean, moving variance of every BN, unfrozen blocks included, stay put.
    for layer in ("top_bn", "block2a_bn", "block1a_bn", "stem_bn"):
        assert _changed(before, after, layer) == [False, False, False, False], layer


def test_epochs_run_on_one_axis_across_phases(tiny_backbone) -> None:
    classifier = attach_head(tiny_backbone(), num_classes=3, pooling="avg", dropout=0.0, seed=0)
    history = _run(classifier, [Phase("frozen", 0, 2, 0.01), Phase("unfreeze_top_1", 1, 3, 0.001)])
    assert [row["epoch"] for row in history.rows] == [0, 1, 2, 3, 4]
    assert [row["phase"] for row in history.rows] == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert [row["lr"] for row in history.rows] == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.001])
    assert [(phase.first_epoch, phase.end_epoch) for phase in history.phases] == [(0, 2), (2, 5)]
    assert all(phase.seconds > 0 for phase in history.phases)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.rows[0])


def test_cached_training_equals_training_on_images(tiny_backbone) -> None:
    phases = [Phase("frozen", 0, 2, 0.01), Phase("unfreeze_top_2", 2, 2, 0.005)]
    results = []
    for cache_bytes in (1 << 30, 0):
        keras.utils.set_random_seed(0)
        classifier = attach_head(tiny_backbone(), num_classes=3, pooling="avg", dropout=0.0, seed=0)
        history = _run(classifier, phases, cache_bytes=cache_bytes)
        results.append((_snapshot(classifier.model), [row["val_loss"] for row in history.rows]))
    (cached_weights, cached_losses), (image_weights, image_losses) = results
    assert cached_losses == pytest.approx(image_losses, rel=1e-4)
    for layer, values in cached_weights.items():
        for cached, direct in zip(values, image_weights[layer], strict=True):
            np.testing.assert_allclose(cached, direct, rtol=1e-4, atol=1e-5, err_msg=layer)


def test_cache_falls_back_to_images_over_budget(tiny_backbone) -> None:
    classifier = attach_head(tiny_backbone(), num_classes=3, pooling="avg", dropout=0.0, seed=0)
    history = _run(classifier, [Phase("frozen", 0, 1, 0.01)], cache_bytes=100)
    assert history.phases[0].cached_features is False


def test_sub_model_from_a_cut_matches_the_full_model(tiny_backbone) -> None:
    classifier = attach_head(tiny_backbone(), num_classes=3, pooling="avg", dropout=0.0, seed=0)
    images = np.random.default_rng(0).uniform(-1, 1, (8, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    expected = classifier.model.predict(images, verbose=0)
    for blocks in range(0, 5):
        cut = cut_tensor(classifier, blocks)
        prefix = keras.Model(classifier.model.input, cut)
        top = keras.Model(cut, classifier.model.output) if cut is not classifier.model.input else classifier.model
        np.testing.assert_array_equal(top.predict(prefix.predict(images, verbose=0), verbose=0), expected)


def test_same_seed_reproduces_the_run_exactly(tiny_backbone) -> None:
    phases = [Phase("frozen", 0, 2, 0.01), Phase("unfreeze_top_2", 2, 1, 0.005)]
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(7)
        classifier = attach_head(tiny_backbone(), num_classes=3, pooling="avg", dropout=0.3, seed=7)
        history = _run(classifier, phases)
        runs.append(([row["loss"] for row in history.rows], _snapshot(classifier.model)))
    (first_losses, first_weights), (second_losses, second_weights) = runs
    assert first_losses == second_losses
    for layer, values in first_weights.items():
        for left, right in zip(values, second_weights[layer], strict=True):
            np.testing.assert_array_equal(left, right, err_msg=layer)

"""The fine-tune recipe: what each phase changes, the global epoch axis, the feature cache, and the
switches a phase carries (schedule, BatchNorm policy, discriminative LR, early stopping, smoothing)."""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
import pytest

from pipeline.data.augmentation import build_augmentation
from pipeline.model.head import build_head
from pipeline.params import ParamsError, parse
from pipeline.params.head import HeadParams
from pipeline.params.optimizer import AdamParams, SGDParams
from pipeline.params.schedule import ConstantParams, ExponentialParams
from pipeline.params.train import AugmentationParams, EarlyStoppingParams
from pipeline.training.divergence import TrainingDivergedError
from pipeline.training.features import cut_tensor
from pipeline.training.recipe import Phase, plan_phases
from tests.conftest import fine_tune_tiny, tiny_splits

IMAGE_SIZE = 16
ADAM = AdamParams(name="adam")
CONSTANT = ConstantParams(name="constant")


def _augmentation(*, seed: int = 0, **switches):
    """The augmentation of a `train.augmentation` section with `switches` on."""
    return build_augmentation(AugmentationParams(**switches), seed=seed)


def _phase(name: str, blocks: int, epochs: int, learning_rate: float, **settings) -> Phase:
    settings.setdefault("optimizer", ADAM)
    settings.setdefault("schedule", CONSTANT)
    return Phase(name, blocks, epochs, learning_rate, **settings)


_run = functools.partial(fine_tune_tiny, image_size=IMAGE_SIZE)


def _snapshot(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.array(value) for value in layer.get_weights()] for layer in model.layers if layer.weights}


def _changed(before, after, layer: str) -> list[bool]:
    return [not np.array_equal(old, new) for old, new in zip(before[layer], after[layer], strict=True)]


def test_plan_phases_scales_the_base_learning_rate() -> None:
    train = parse(
        {
            "train": {
                "frozen_epochs": 3,
                "unfreeze": [
                    {"blocks": 2, "epochs": 2, "lr_factor": 0.1},
                    {"blocks": 4, "epochs": 1, "lr_factor": 0.01},
                ],
            }
        }
    ).train
    phases = plan_phases(train, base_learning_rate=0.002, block_count=9, steps_per_epoch=10, train_examples=100)
    assert phases == [
        _phase("frozen", 0, 3, 0.002),
        _phase("unfreeze_top_2", 2, 2, 0.002 * 0.1),
        _phase("unfreeze_top_4", 4, 1, 0.002 * 0.01),
    ]


def test_a_stage_inherits_the_sections_settings_or_overrides_them() -> None:
    train = parse(
        {
            "train": {
                "optimizer": {"name": "sgd", "momentum": 0.9},
                "schedule": "cosine",
                "bn_policy": "affine",
                "lr_decay_per_block": 2.6,
                "early_stopping": {"patience": 1},
                "unfreeze": [
                    {"blocks": 1, "epochs": 1, "lr_factor": 0.5},
                    {
                        "blocks": "all",
                        "epochs": 2,
                        "lr_factor": 0.1,
                        "optimizer": "adam",
                        "schedule": {"name": "exponential", "decay_epochs": 2},
                        "bn_policy": "trainable",
                        "lr_decay_per_block": 1.0,
                    },
                ],
            }
        }
    ).train
    frozen, inherited, overridden = plan_phases(
        train, base_learning_rate=0.01, block_count=4, steps_per_epoch=10, train_examples=100
    )
    assert (frozen.optimizer, frozen.schedule.name, frozen.bn_policy) == (train.optimizer, "cosine", "affine")
    assert (inherited.optimizer.name, inherited.schedule.name, inherited.bn_policy) == ("sgd", "cosine", "affine")
    assert (inherited.lr_decay_per_block, inherited.early_stopping.patience) == (2.6, 1)
    assert (overridden.name, overridden.trainable_blocks) == ("unfreeze_all", 4)
    assert (overridden.optimizer, overridden.bn_policy) == (ADAM, "trainable")
    assert overridden.schedule == ExponentialParams(name="exponential", decay_epochs=2)
    assert overridden.lr_decay_per_block == 1.0
    assert overridden.learning_rate == pytest.approx(0.001, rel=1e-12)


def test_onecycle_gives_a_momentum_less_sgd_the_cycles_top_momentum() -> None:
    train = parse({"train": {"optimizer": "sgd", "schedule": {"name": "onecycle", "max_momentum": 0.9}}}).train
    (frozen,) = plan_phases(train, base_learning_rate=0.01, block_count=4, steps_per_epoch=10, train_examples=100)
    assert frozen.optimizer == SGDParams(name="sgd", momentum=0.9)


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0], ids=["cached", "images"])
def test_frozen_phase_changes_only_the_head(tiny_backbone, cache_bytes: int) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.2), num_classes=3, seed=0)
    before = _snapshot(classifier.model)
    history = _run(classifier, [_phase("frozen", 0, 2, 0.01)], cache_bytes=cache_bytes)
    after = _snapshot(classifier.model)
    assert history.phases[0].cached_features is bool(cache_bytes)
    for layer in before:
        if layer == "head_predictions":
            assert all(_changed(before, after, layer))
        else:
            assert not any(_changed(before, after, layer)), layer


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0], ids=["cached", "images"])
def test_unfreeze_phase_trains_top_blocks_and_keeps_the_rest_bit_identical(tiny_backbone, cache_bytes: int) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    _run(classifier, [_phase("frozen", 0, 1, 0.01)], cache_bytes=cache_bytes)
    before = _snapshot(classifier.model)
    _run(classifier, [_phase("unfreeze_top_2", 2, 2, 0.01)], cache_bytes=cache_bytes)
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
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    history = _run(classifier, [_phase("frozen", 0, 2, 0.01), _phase("unfreeze_top_1", 1, 3, 0.001)])
    assert [row["epoch"] for row in history.rows] == [0, 1, 2, 3, 4]
    assert [row["phase"] for row in history.rows] == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert [row["lr"] for row in history.rows] == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.001])
    assert [(phase.first_epoch, phase.end_epoch) for phase in history.phases] == [(0, 2), (2, 5)]
    assert all(phase.seconds > 0 for phase in history.phases)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.rows[0])


@pytest.mark.parametrize("bn_policy", ["frozen", "affine", "trainable"])
def test_cached_training_equals_training_on_images(tiny_backbone, bn_policy: str) -> None:
    phases = [
        _phase("frozen", 0, 2, 0.01),
        _phase("unfreeze_top_2", 2, 2, 0.005, bn_policy=bn_policy),
        _phase("unfreeze_top_1", 1, 1, 0.005, bn_policy=bn_policy),
    ]
    results = []
    for cache_bytes in (1 << 30, 0):
        keras.utils.set_random_seed(0)
        classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
        history = _run(classifier, phases, cache_bytes=cache_bytes)
        results.append((_snapshot(classifier.model), [row["val_loss"] for row in history.rows]))
    (cached_weights, cached_losses), (image_weights, image_losses) = results
    assert cached_losses == pytest.approx(image_losses, rel=1e-4)
    for layer, values in cached_weights.items():
        for cached, direct in zip(values, image_weights[layer], strict=True):
            np.testing.assert_allclose(cached, direct, rtol=1e-4, atol=1e-5, err_msg=layer)


def test_cache_falls_back_to_images_over_budget(tiny_backbone) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    history = _run(classifier, [_phase("frozen", 0, 1, 0.01)], cache_bytes=100)
    assert history.phases[0].cached_features is False


def test_sub_model_from_a_cut_matches_the_full_model(tiny_backbone) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    images = np.random.default_rng(0).uniform(-1, 1, (8, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    expected = classifier.model.predict(images, verbose=0)
    for blocks in range(0, 5):
        cut = cut_tensor(classifier, blocks)
        prefix = keras.Model(classifier.model.input, cut)
        top = keras.Model(cut, classifier.model.output) if cut is not classifier.model.input else classifier.model
        np.testing.assert_array_equal(top.predict(prefix.predict(images, verbose=0), verbose=0), expected)


def test_same_seed_reproduces_the_run_exactly(tiny_backbone) -> None:
    phases = [_phase("frozen", 0, 2, 0.01), _phase("unfreeze_top_2", 2, 1, 0.005)]
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(7)
        classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.3), num_classes=3, seed=7)
        history = _run(classifier, phases)
        runs.append(([row["loss"] for row in history.rows], _snapshot(classifier.model)))
    (first_losses, first_weights), (second_losses, second_weights) = runs
    assert first_losses == second_losses
    for layer, values in first_weights.items():
        for left, right in zip(values, second_weights[layer], strict=True):
            np.testing.assert_array_equal(left, right, err_msg=layer)


def _bn_changes(before, after) -> dict[str, list[bool]]:
    return {layer: _changed(before, after, layer) for layer in ("top_bn", "block2a_bn", "block1a_bn", "stem_bn")}


@pytest.mark.parametrize(
    ("bn_policy", "unfrozen_bn_changes"),
    [
        ("frozen", [False, False, False, False]),
        ("affine", [True, True, False, False]),
        ("trainable", [True, True, True, True]),
    ],
)
def test_bn_policy_decides_what_the_unfrozen_batch_norms_learn(tiny_backbone, bn_policy, unfrozen_bn_changes) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    before = _snapshot(classifier.model)
    _run(classifier, [_phase("unfreeze_top_2", 2, 2, 0.01, bn_policy=bn_policy)])
    changes = _bn_changes(before, _snapshot(classifier.model))
    # gamma, beta, moving mean, moving variance; the frozen blocks' BN never moves.
    assert changes == {
        "top_bn": unfrozen_bn_changes,
        "block2a_bn": unfrozen_bn_changes,
        "block1a_bn": [False] * 4,
        "stem_bn": [False] * 4,
    }
    assert all(type(layer) is not keras.layers.Layer for layer in classifier.model.layers)
    assert type(classifier.model.get_layer("top_bn")) is keras.layers.BatchNormalization


def test_discriminative_learning_rates_reach_the_layer_map_and_the_updates(tiny_backbone) -> None:
    sgd = SGDParams(name="sgd")
    results = {}
    for decay in (1.0, 4.0):
        keras.utils.set_random_seed(0)
        classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
        before = _snapshot(classifier.model)
        # One batch of all 96 images: one SGD step from the same weights, so the same gradients.
        history = _run(
            classifier,
            [_phase("unfreeze_top_2", 2, 1, 0.05, optimizer=sgd, lr_decay_per_block=decay)],
            batch_size=96,
        )
        after = _snapshot(classifier.model)
        multipliers = {row.layer: row.lr_multiplier for row in history.layers}
        updates = {
            layer: after[layer][0] - before[layer][0] for layer in ("head_predictions", "top_conv", "block2a_conv")
        }
        results[decay] = (multipliers, updates)
    multipliers, decayed = results[4.0]
    assert (multipliers["head_predictions"], multipliers["top_conv"], multipliers["block2a_conv"]) == (
        1.0,
        0.25,
        0.0625,
    )
    assert multipliers["stem_conv"] == 0.0
    assert results[1.0][0]["top_conv"] == 1.0
    plain = results[1.0][1]
    # Updates are differences of float32 weights near 0.1-1, resolved to about 1e-7.
    np.testing.assert_allclose(decayed["head_predictions"], plain["head_predictions"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(decayed["top_conv"], 0.25 * plain["top_conv"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(decayed["block2a_conv"], 0.0625 * plain["block2a_conv"], rtol=1e-5, atol=1e-7)
    assert np.abs(plain["block2a_conv"]).max() > 1e-4


def test_learning_rate_logged_each_epoch_follows_the_phase_schedule(tiny_backbone) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    exponential = ExponentialParams(name="exponential", decay_epochs=2.0)
    history = _run(
        classifier, [_phase("frozen", 0, 1, 0.01), _phase("unfreeze_top_1", 1, 3, 0.004, schedule=exponential)]
    )
    steps_per_epoch = math.ceil(96 / 16)
    # The LR of each epoch's last step, t counted from the phase's start.
    expected = [0.01] + [
        0.004 * 0.1 ** (((epoch + 1) * steps_per_epoch - 1) / (2.0 * steps_per_epoch)) for epoch in range(3)
    ]
    assert [row["lr"] for row in history.rows] == pytest.approx(expected, rel=1e-6)
    assert [phase.schedule for phase in history.phases] == ["constant", "exponential"]


def test_early_stopping_ends_the_phase_on_its_best_epoch(tiny_backbone) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    # min_delta this large: no epoch after the first counts as an improvement.
    stopping = EarlyStoppingParams(monitor="val_loss", patience=1, min_delta=100.0, restore_best=True)
    seen = []
    spy = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(classifier.model.get_layer("head_predictions").get_weights())
    )
    history = _run(
        classifier,
        [_phase("frozen", 0, 5, 0.05, early_stopping=stopping), _phase("unfreeze_top_1", 1, 1, 1e-9)],
        callbacks=[spy],
    )
    stopped, following = history.phases
    assert (stopped.first_epoch, stopped.end_epoch, stopped.best_epoch) == (0, 2, 0)
    assert (following.first_epoch, following.end_epoch) == (2, 3)
    assert [row["epoch"] for row in history.rows] == [0, 1, 2]
    # The next phase started from the best epoch's weights: at lr 1e-9 they barely move from epoch 1's.
    for restored, best in zip(seen[2], seen[0], strict=True):
        np.testing.assert_allclose(restored, best, atol=1e-6)
    assert not np.allclose(seen[1][0], seen[0][0])


def test_early_stopping_waits_for_the_minimum_epochs_and_still_restores_an_earlier_best(tiny_backbone) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    seen = []
    spy = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(classifier.model.get_layer("head_predictions").get_weights())
    )
    # Nothing after the first epoch improves by 100, so patience 1 would stop at epoch 2; the minimum is 4.
    stopping = EarlyStoppingParams(monitor="val_loss", patience=1, min_delta=100.0, restore_best=True)
    phases = [
        _phase("unfreeze_top_1", 1, 1, 1e-9),
        _phase("frozen", 0, 8, 0.05, early_stopping=stopping, min_epochs=4),
        _phase("unfreeze_top_1", 1, 1, 1e-9),
    ]
    history = _run(classifier, phases, callbacks=[spy])
    _, stopped, following = history.phases
    assert (stopped.first_epoch, stopped.end_epoch, stopped.best_epoch) == (1, 5, 1)
    assert following.first_epoch == 5
    for restored, best in zip(seen[5], seen[1], strict=True):
        np.testing.assert_allclose(restored, best, atol=1e-6)


@pytest.mark.parametrize(
    ("steps_per_epoch", "expected"),
    [
        (875, (4, 1)),  # 56,000 images at batch 64: one epoch is past 600 steps, four reach 3,500
        (13, (100, 47)),  # 800 images: 47 epochs reach 600 steps; 3,500 steps would be 269 epochs, max_epochs caps
        (79, (44, 8)),
        (5000, (1, 1)),  # one epoch is past max_steps: the phase still runs a whole one
    ],
)
def test_an_auto_phase_is_bounded_in_steps(steps_per_epoch: int, expected: tuple[int, int]) -> None:
    train = parse({"train": {"phase_length": {"min_steps": 600, "max_steps": 3500, "max_epochs": 100}}}).train
    (frozen,) = plan_phases(
        train, base_learning_rate=0.01, block_count=4, steps_per_epoch=steps_per_epoch, train_examples=100
    )
    assert (frozen.epochs, frozen.min_epochs) == expected
    assert frozen.early_stopping == EarlyStoppingParams(monitor="val_loss", patience=3, restore_best=True)
    assert frozen.length_note == (f"{steps_per_epoch} steps each: at least 600 steps, at most 3500 steps or 100 epochs")


def test_fixed_epochs_run_every_epoch_unless_early_stopping_is_set() -> None:
    train = parse(
        {
            "train": {
                "frozen_epochs": 3,
                "phase_length": {"min_steps": 100, "max_steps": 1000},
                "unfreeze": [
                    {"blocks": 1, "epochs": 2, "lr_factor": 0.5},
                    {"blocks": 1, "epochs": "auto", "lr_factor": 0.1, "min_steps": 50, "max_epochs": 6},
                ],
            }
        }
    ).train
    frozen, fixed, automatic = plan_phases(
        train, base_learning_rate=0.01, block_count=4, steps_per_epoch=20, train_examples=100
    )
    assert (frozen.epochs, frozen.min_epochs, frozen.early_stopping, frozen.length_note) == (3, None, None, "")
    assert (fixed.epochs, fixed.min_epochs, fixed.early_stopping) == (2, None, None)
    assert (automatic.epochs, automatic.min_epochs, automatic.early_stopping.patience) == (6, 3, 3)
    assert frozen.describe_plan() == ("frozen: 3 epochs, no early stopping; the head at adam lr 0.01 (constant)")
    assert automatic.describe_plan() == (
        "unfreeze_top_1: 3 to 6 epochs (20 steps each: at least 50 steps, at most 1000 steps or 6 epochs), "
        "early stopping on val_loss, patience 3, best epoch restored; the head and the top 1 blocks at adam "
        "lr 0.001 (constant)"
    )
    every = parse({"train": {"frozen_epochs": 3, "early_stopping": {"patience": 1}}}).train
    (stopped,) = plan_phases(every, base_learning_rate=0.01, block_count=4, steps_per_epoch=20, train_examples=100)
    assert stopped.early_stopping.patience == 1
    none = parse({"train": {"early_stopping": None}}).train
    (unstopped,) = plan_phases(none, base_learning_rate=0.01, block_count=4, steps_per_epoch=20, train_examples=100)
    assert (unstopped.epochs, unstopped.min_epochs, unstopped.early_stopping) == (100, 30, None)


@pytest.mark.parametrize(
    ("train_examples", "block_count", "expected"),
    [
        (800, 7, (4, "auto: 800 training images <= 10000")),
        (10000, 7, (4, "auto: 10000 training images <= 10000")),
        (56000, 7, (2, "auto: 56000 training images > 10000")),
        (800, 1, (1, "auto: 800 training images <= 10000")),  # a SavedModel is one block
    ],
)
def test_auto_blocks_unfreeze_deeper_on_a_small_split(train_examples, block_count, expected) -> None:
    train = parse(
        {"train": {"unfreeze": [{"blocks": "auto", "lr_factor": 0.5}, {"blocks": 3, "epochs": 1, "lr_factor": 0.1}]}}
    ).train
    _, automatic, fixed = plan_phases(
        train, base_learning_rate=0.01, block_count=block_count, steps_per_epoch=13, train_examples=train_examples
    )
    assert (automatic.trainable_blocks, automatic.depth_note) == expected
    assert automatic.name == f"unfreeze_top_{expected[0]}"
    assert f"the head and the top {expected[0]} blocks ({expected[1]})" in automatic.describe_plan()
    assert (fixed.trainable_blocks, fixed.depth_note) == (3, "")


def test_step_bounds_are_refused_on_a_fixed_stage_and_when_crossed() -> None:
    with pytest.raises(ParamsError, match=r"train.unfreeze.0: .*min_steps bounds an `epochs: auto` stage"):
        parse({"train": {"unfreeze": [{"blocks": 1, "epochs": 2, "lr_factor": 0.5, "min_steps": 10}]}})
    with pytest.raises(ParamsError, match=r"train.phase_length: .*min_steps \(700\) must not exceed max_steps"):
        parse({"train": {"phase_length": {"min_steps": 700, "max_steps": 600}}})
    with pytest.raises(ParamsError, match=r"train.frozen_epochs: received 0; Input should be greater than 0, or auto"):
        parse({"train": {"frozen_epochs": 0}})
    with pytest.raises(ParamsError, match=r"train.unfreeze.0.blocks: received 'deep'; .*, or all or auto"):
        parse({"train": {"unfreeze": [{"blocks": "deep", "lr_factor": 0.5}]}})


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0], ids=["cached", "images"])
def test_label_smoothing_changes_the_loss_on_both_paths(tiny_backbone, cache_bytes: int) -> None:
    losses = []
    for smoothing in (0.0, 0.2):
        keras.utils.set_random_seed(0)
        classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
        history = _run(classifier, [_phase("frozen", 0, 1, 0.01)], cache_bytes=cache_bytes, label_smoothing=smoothing)
        losses.append(history.rows[0]["val_loss"])
    # Smoothed targets can never be matched exactly: the loss has a floor above zero and differs.
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)


def test_augmentation_trains_on_images_and_says_why(tiny_backbone) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    augmentation = _augmentation(flip="horizontal", rotation=0.1)
    history = _run(classifier, [_phase("frozen", 0, 1, 0.01)], augmentation=augmentation)
    (phase,) = history.phases
    assert phase.cached_features is False
    assert "augmentation" in phase.data_note


def test_augmentation_reaches_training_batches_only(tiny_backbone) -> None:
    from pipeline.training.features import InputSettings, PhaseDataFactory

    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    train, val = tiny_splits()
    batches = {}
    for label, augmentation in (("plain", None), ("flipped", _augmentation(flip="horizontal"))):
        data = PhaseDataFactory(
            classifier,
            train=train,
            val=val,
            inputs=InputSettings(
                image_size=IMAGE_SIZE, batch_size=96, seed=0, cache_limit_bytes=0, augmentation=augmentation
            ),
            deepest_trainable_blocks=0,
        ).for_phase(0)
        batches[label] = (next(iter(data.train()))[0].numpy(), next(iter(data.val))[0].numpy())
    (plain_train, plain_val), (flipped_train, flipped_val) = batches["plain"], batches["flipped"]
    np.testing.assert_array_equal(flipped_val, plain_val)
    # Same shuffle seed, so the same images: each is kept or mirrored, and some are mirrored.
    mirrored = [
        np.allclose(after, before[:, ::-1]) and not np.allclose(after, before)
        for after, before in zip(flipped_train, plain_train, strict=True)
    ]
    kept = [np.allclose(after, before) for after, before in zip(flipped_train, plain_train, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert any(mirrored)


def _flip_factory(classifier, train, val, *, deepest: int, cache_bytes: int = 1 << 30):
    from pipeline.training.features import InputSettings, PhaseDataFactory

    return PhaseDataFactory(
        classifier,
        train=train,
        val=val,
        inputs=InputSettings(
            image_size=IMAGE_SIZE,
            batch_size=32,
            seed=0,
            cache_limit_bytes=cache_bytes,
            augmentation=_augmentation(flip="horizontal"),
        ),
        deepest_trainable_blocks=deepest,
    )


@pytest.mark.parametrize("trainable_blocks", [0, 1])
def test_flip_alone_caches_both_orientations_and_draws_one_per_epoch(tiny_backbone, trainable_blocks: int) -> None:
    from pipeline.data.datasets import to_model_input

    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    train, val = tiny_splits()
    factory = _flip_factory(classifier, train, val, deepest=2)
    data = factory.for_phase(trainable_blocks)
    assert data.cached is True
    assert "both orientations of the horizontal flip" in data.note
    cut = cut_tensor(classifier, 2)
    assert factory.estimated_cache_bytes == int(np.prod(cut.shape[1:])) * 4 * (2 * 96 + 30)

    # What the phase's sub-model should see: the frozen part applied to each image and to its mirror.
    prefix = keras.Model(classifier.model.input, cut_tensor(classifier, trainable_blocks))
    preprocessing = classifier.backbone.make_preprocessing()
    pixels = keras.ops.convert_to_numpy(to_model_input(train.images, image_size=IMAGE_SIZE))
    views = [
        prefix.predict(keras.ops.convert_to_numpy(preprocessing(images)), verbose=0).reshape(96, -1)
        for images in (pixels, pixels[:, :, ::-1, :])
    ]
    choices = []
    for epoch in range(2):
        seen = {}
        for features, labels in data.train(first_epoch=epoch, end_epoch=epoch + 1):
            for row, label in zip(features.numpy().reshape(len(labels), -1), labels.numpy(), strict=True):
                # (orientation, image) whose expected features this row is.
                distances = np.stack([np.abs(view - row).max(axis=1) for view in views])
                view, index = np.unravel_index(np.argmin(distances), distances.shape)
                assert distances[view, index] < 1e-4
                assert label == train.labels[index]
                seen[int(index)] = int(view)
        assert sorted(seen) == list(range(96))
        assert set(seen.values()) == {0, 1}
        choices.append([seen[index] for index in range(96)])
    assert choices[0] != choices[1]

    val_prefix = prefix.predict(
        keras.ops.convert_to_numpy(preprocessing(to_model_input(val.images, image_size=IMAGE_SIZE))), verbose=0
    )
    val_features = np.concatenate([features.numpy() for features, _ in data.val])
    np.testing.assert_allclose(val_features, val_prefix, atol=1e-5)


def test_flip_cache_counts_both_orientations_against_the_budget(tiny_backbone) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    train, val = tiny_splits()
    per_example = int(np.prod(cut_tensor(classifier, 2).shape[1:])) * 4
    fits_without_flip = per_example * (96 + 30)
    factory = _flip_factory(classifier, train, val, deepest=2, cache_bytes=fits_without_flip)
    assert factory.caching is False
    assert "over train.feature_cache_mb" in factory.for_phase(0).note


def test_an_absurd_learning_rate_ends_training_with_divergence(tiny_backbone) -> None:
    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    sgd = SGDParams(name="sgd")
    phases = [_phase("frozen", 0, 3, 1e4, optimizer=sgd), _phase("unfreeze_top_1", 1, 1, 1e3, optimizer=sgd)]
    with pytest.raises(TrainingDivergedError, match=r"^training diverged in epoch 1 \(phase frozen, lr 10000\): loss"):
        _run(classifier, phases)


def test_filling_the_cache_on_a_small_dataset_triggers_no_retracing_warning(tiny_backbone) -> None:
    # TensorFlow warns when 5 of the last ~10 calls of one traced function retrace. Keras' predict traced each
    # new sub-model twice (the first batch, then the last, smaller one): on a small dataset, with a sub-model per
    # cut, that was the warning. 70 and 19 images in batches of 32 end on a partial batch.
    import logging

    from pipeline.training.features import InputSettings, PhaseDataFactory

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    classifier = build_head(tiny_backbone(), HeadParams(pooling="avg", dropout=0.0), num_classes=3, seed=0)
    train, val = tiny_splits(train_count=70, val_count=19)
    inputs = InputSettings(image_size=IMAGE_SIZE, batch_size=32, seed=0, cache_limit_bytes=1 << 30)
    keep = Keep()
    logging.getLogger("tensorflow").addHandler(keep)
    try:
        for _attempt in range(3):
            factory = PhaseDataFactory(classifier, train=train, val=val, inputs=inputs, deepest_trainable_blocks=2)
            phases = [factory.for_phase(blocks) for blocks in (0, 1, 2)]
    finally:
        logging.getLogger("tensorflow").removeHandler(keep)
    assert [phase.cached for phase in phases] == [True, True, True]
    assert [message for message in keep.messages if "retracing" in message] == []

"""The LR range test: the exponential sweep, the smoothing, both suggestion rules, weights put back."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.lr_finder import (
    SUGGESTION_RULES,
    LRFinderResult,
    exponential_learning_rates,
    lr_range_test,
    smooth,
    suggest_steepest,
    suggest_valley,
)


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])


def _data(batch_size: int = 16) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 96)
    features = rng.normal(size=(96, 4)).astype("float32")
    features[np.arange(96), labels] += 3.0
    return tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch_size)


def _sweep(**options) -> LRFinderResult:
    return lr_range_test(
        _model(),
        _data(),
        make_optimizer=lambda rate: keras.optimizers.SGD(learning_rate=rate),
        loss="sparse_categorical_crossentropy",
        **options,
    )


def test_learning_rates_grow_exponentially() -> None:
    rates = exponential_learning_rates(min_lr=1e-4, max_lr=1.0, steps=5)
    assert rates == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0], rel=1e-12)


def test_smoothing_is_a_bias_corrected_moving_average() -> None:
    losses = [2.0, 1.0, 4.0, 3.0]
    average, expected = 0.0, []
    for index, loss in enumerate(losses):
        average = 0.9 * average + 0.1 * loss
        expected.append(average / (1 - 0.9 ** (index + 1)))
    assert smooth(losses, beta=0.9) == pytest.approx(expected, rel=1e-12)
    assert smooth(losses, beta=0.9)[0] == 2.0


def test_steepest_finds_the_fastest_fall_against_log_lr() -> None:
    rates = list(np.logspace(-6, 0, 61))
    # A smooth step down centred on 1e-3: the slope against log10(lr) is steepest there.
    losses = [1.0 - 0.8 / (1 + math.exp(-4 * (math.log10(rate) + 3))) for rate in rates]
    assert suggest_steepest(rates, losses) == pytest.approx(1e-3, rel=1e-9)


def test_valley_is_two_thirds_down_the_longest_fall() -> None:
    rates = [10.0**exponent for exponent in range(-8, 2)]
    # Falls from index 1 to 7 (longest run), then rises: two thirds of 1..7 is index 5.
    losses = [2.0, 2.1, 1.9, 1.6, 1.2, 0.9, 0.7, 0.6, 0.8, 3.0]
    assert suggest_valley(rates, losses) == 10.0**-3
    # A monotone fall: the whole curve is the valley.
    assert suggest_valley(rates, sorted(losses, reverse=True)) == rates[6]


def test_too_short_a_curve_says_what_to_change() -> None:
    with pytest.raises(ValueError, match="the sweep recorded 3 steps before the loss diverged; at least 5"):
        suggest_valley([1e-3, 1e-2, 1e-1], [1.0, 0.5, 9.0])


def test_sweep_records_the_rates_it_used_and_restores_the_weights() -> None:
    model = _model()
    before = [np.array(weight) for weight in model.get_weights()]
    result = lr_range_test(
        model,
        _data(),
        make_optimizer=lambda rate: keras.optimizers.SGD(learning_rate=rate),
        loss="sparse_categorical_crossentropy",
        min_lr=1e-4,
        max_lr=1.0,
        steps=20,
        divergence=1e9,
    )
    expected = [1e-4 * (1.0 / 1e-4) ** (index / 19) for index in range(20)]
    assert list(result.learning_rates) == pytest.approx(expected, rel=1e-6)  # float32 variable
    assert len(result.losses) == 20  # 6 batches, repeated
    assert list(result.smoothed_losses) == pytest.approx(smooth(result.losses, beta=0.98), rel=1e-12)
    for restored, original in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(restored, original)
    assert 1e-4 <= result.valley <= 1.0
    assert 1e-4 <= result.steepest <= 1.0


def test_sweep_stops_when_the_loss_diverges() -> None:
    result = _sweep(min_lr=1e-3, max_lr=1e6, steps=80)
    assert len(result.losses) < 80
    assert all(math.isfinite(value) for value in result.smoothed_losses)


def test_suggested_rate_trains_faster_than_the_smallest() -> None:
    result = _sweep(min_lr=1e-5, max_lr=10.0, steps=60)

    def loss_after_training(rate: float) -> float:
        model = _model()
        model.compile(keras.optimizers.SGD(rate), loss="sparse_categorical_crossentropy")
        model.fit(_data(), epochs=3, shuffle=False, verbose=0)
        return float(model.evaluate(_data(), verbose=0))

    assert loss_after_training(result.steepest) < loss_after_training(1e-5) - 0.1
    assert loss_after_training(result.valley) < loss_after_training(1e-5) - 0.1


def test_result_serialises_and_names_its_rules() -> None:
    result = LRFinderResult((1e-3, 1e-2), (1.0, 0.5), (1.0, 0.7), valley=1e-2, steepest=1e-3)
    assert result.to_dict() == {
        "learning_rates": [1e-3, 1e-2],
        "losses": [1.0, 0.5],
        "smoothed_losses": [1.0, 0.7],
        "valley": 1e-2,
        "steepest": 1e-3,
    }
    assert [result.suggestion(rule) for rule in SUGGESTION_RULES] == [1e-2, 1e-3]
    with pytest.raises(ValueError, match="unknown suggestion rule 'minimum'; allowed: valley, steepest"):
        result.suggestion("minimum")

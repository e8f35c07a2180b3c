"""The LR range test: the exponential sweep, divergence, weights put back, the report of the lr_find stage."""

from __future__ import annotations

import math
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.optim.lr_finder import LRFinderResult, exponential_learning_rates, lr_range_test
from pipeline.optim.lr_suggestions import SUGGESTION_RULES
from tests.optim.conftest import closed_form_smoothing

LOSS = "sparse_categorical_crossentropy"


def _sgd(rate: float) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(learning_rate=rate)


def _model(*, extras: bool = False) -> keras.Model:
    keras.utils.set_random_seed(0)
    layers = [keras.Input((4,)), keras.layers.Dense(3, activation="softmax")]
    if extras:
        layers[1:1] = [keras.layers.Dense(8), keras.layers.BatchNormalization(), keras.layers.Dropout(0.3)]
    return keras.Sequential(layers)


def _data(*, batches: int = 6, nan_batch: int | None = None) -> tf.data.Dataset:
    """Separable data: the feature at the label's index is shifted by +3. Batches of 16."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, batches * 16)
    features = rng.normal(size=(batches * 16, 4)).astype("float32")
    features[np.arange(batches * 16), labels] += 3.0
    if nan_batch is not None:
        features[nan_batch * 16 : (nan_batch + 1) * 16] = np.nan
    return tf.data.Dataset.from_tensor_slices((features, labels)).batch(16)


def test_module_top_imports_neither_keras_nor_tensorflow() -> None:
    code = "import sys, pipeline.optim.lr_finder; print(sorted({'keras', 'tensorflow'} & set(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_learning_rates_grow_exponentially_and_refuse_bad_ranges() -> None:
    rates = exponential_learning_rates(min_lr=1e-4, max_lr=1.0, steps=5)
    assert rates == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0], rel=1e-12)
    with pytest.raises(ValueError, match=r"0 < min_lr < max_lr; received min_lr=0.1, max_lr=0.01"):
        exponential_learning_rates(min_lr=0.1, max_lr=0.01, steps=5)
    with pytest.raises(ValueError, match=r"steps must be an integer of at least 2; received 1"):
        exponential_learning_rates(min_lr=1e-4, max_lr=1.0, steps=1)


def test_sweep_trains_each_batch_at_the_scheduled_rate_and_records_its_own_loss() -> None:
    result = lr_range_test(
        _model(), _data(), make_optimizer=_sgd, loss=LOSS, min_lr=1e-4, max_lr=1.0, steps=20, divergence=1e9
    )
    expected_rates = [1e-4 * (1.0 / 1e-4) ** (index / 19) for index in range(20)]
    assert result.learning_rates == pytest.approx(expected_rates, rel=1e-7, abs=0)
    # Read back from the optimiser's float32 variable, not copied from the schedule.
    assert all(float(np.float32(rate)) == rate for rate in result.learning_rates)
    assert result.learning_rates != tuple(expected_rates)
    # The same steps by hand: one batch at a time (6 batches, repeated) at the same rates. The sweep's losses
    # are each batch's own, not Keras' running mean over the epoch.
    reference = _model()
    reference.compile(_sgd(1e-4), loss=LOSS)
    by_hand = []
    for rate, (features, labels) in zip(expected_rates, _data().repeat(), strict=False):
        reference.optimizer.learning_rate = rate
        by_hand.append(reference.train_on_batch(features, labels, return_dict=True)["loss"])
    np.testing.assert_allclose(result.losses, by_hand, rtol=1e-6)
    np.testing.assert_allclose(result.smoothed_losses, closed_form_smoothing(by_hand, 0.98), rtol=1e-6)


def test_sweep_puts_back_every_variable_bit_for_bit() -> None:
    model = _model(extras=True)
    before = {variable.path: np.array(variable.numpy(), copy=True) for variable in model.variables}
    assert any("seed_generator" in path for path in before) and any("moving_mean" in path for path in before)
    result = lr_range_test(model, _data(), make_optimizer=_sgd, loss=LOSS, min_lr=1e-3, max_lr=1.0, steps=12)
    assert result.losses[0] != result.losses[-1]  # it did train
    after = {variable.path: variable.numpy() for variable in model.variables}
    assert after.keys() == before.keys()
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)


def test_sweep_stops_once_the_smoothed_loss_passes_divergence_times_its_best() -> None:
    result = lr_range_test(_model(), _data(), make_optimizer=_sgd, loss=LOSS, min_lr=1e-3, max_lr=1e6, steps=80)
    smoothed = result.smoothed_losses
    assert len(smoothed) < 80
    assert all(math.isfinite(value) for value in (*result.losses, *smoothed))
    assert all(smoothed[index] <= 4.0 * min(smoothed[:index]) for index in range(1, len(smoothed) - 1))
    assert smoothed[-1] > 4.0 * min(smoothed[:-1])


def test_sweep_treats_a_nan_loss_as_divergence_and_leaves_it_out() -> None:
    # Batch 7 of 10 is NaN: steps 0..6 are kept, step 7 stops the sweep and is dropped.
    result = lr_range_test(
        _model(), _data(batches=10, nan_batch=7), make_optimizer=_sgd, loss=LOSS, steps=30, divergence=1e30
    )
    assert len(result.losses) == len(result.learning_rates) == len(result.smoothed_losses) == 7
    assert all(math.isfinite(value) for value in result.smoothed_losses)
    with pytest.raises(ValueError, match=r"diverged after 4 of 30 steps \(min_lr=1e-07, max_lr=10.0\), leaving 3"):
        lr_range_test(_model(), _data(nan_batch=3), make_optimizer=_sgd, loss=LOSS, steps=30)


def test_sweep_refuses_bad_arguments_before_training() -> None:
    def sweep(*, make_optimizer=_sgd, **options):
        return lr_range_test(_model(), _data(), make_optimizer=make_optimizer, loss=LOSS, **options)

    with pytest.raises(ValueError, match="steps must be an integer of at least 5 for a suggestion; received 4"):
        sweep(steps=4)
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\); received 1.0"):
        sweep(smoothing=1.0)
    with pytest.raises(ValueError, match="divergence must be a finite number above 1; received 1.0"):
        sweep(divergence=1.0)
    with pytest.raises(ValueError, match="received min_lr=1.0, max_lr=1.0"):
        sweep(min_lr=1.0, max_lr=1.0)
    decay = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    with pytest.raises(
        ValueError, match="make_optimizer must build an optimiser with a float learning rate; received SGD"
    ):
        sweep(make_optimizer=lambda rate: keras.optimizers.SGD(learning_rate=decay))
    with pytest.raises(ValueError, match="data yielded no batches"), pytest.warns(UserWarning, match="ran out of data"):
        lr_range_test(_model(), _data().take(0), make_optimizer=_sgd, loss=LOSS, steps=10)


def test_suggested_rates_train_faster_than_the_smallest() -> None:
    result = lr_range_test(
        _model(), _data(), make_optimizer=_sgd, loss=LOSS, min_lr=1e-5, max_lr=10.0, steps=60, smoothing=0.9
    )
    assert 1e-5 <= result.valley <= 10.0 and 1e-5 <= result.steepest <= 10.0
    assert result.valley in result.learning_rates and result.steepest in result.learning_rates

    def loss_drop(rate: float) -> float:
        model = _model()
        model.compile(_sgd(rate), loss=LOSS)
        start = model.evaluate(_data(), verbose=0)
        model.fit(_data(), epochs=2, shuffle=False, verbose=0)  # the same 12 steps for every rate
        return start - model.evaluate(_data(), verbose=0)

    slowest = loss_drop(1e-5)
    assert slowest < 1e-3
    assert loss_drop(result.steepest) > slowest + 0.1
    assert loss_drop(result.valley) > slowest + 0.1


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
    with pytest.raises(ValueError, match="rule must be one of valley, steepest; received 'minimum'"):
        result.suggestion("minimum")

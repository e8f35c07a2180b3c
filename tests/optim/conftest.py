"""The harness of the schedule tests (test_schedules.py, test_one_cycle.py): one phase of EPOCHS epochs of
STEPS_PER_EPOCH steps from global epoch FIRST_EPOCH, each formula written independently of the code, and a
real `fit` of one weight.

Schedules compute in float32 (resolution 6e-8 relative), so "equals its formula" means within 1e-6
relative (and 1e-10 absolute, for values near zero): tighter than 1e-7 absolute for every LR here.
The fits train one weight w on loss w ** 2 (gradient 2w) with plain SGD, so the weight after each epoch
is a product over the LR of every step, recomputed here in numpy: a schedule that was not really used
by every step would not match.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pipeline.optim.schedules import learning_rate_used, make_schedule
from tests.conftest import schedule_settings as _settings

LR0 = 0.02
STEPS_PER_EPOCH = 4
EPOCHS = 5
TOTAL = STEPS_PER_EPOCH * EPOCHS
FIRST_EPOCH = 3  # fits start here, as a later phase of the pipeline does


def phase_schedule(name: str, momentum_term: str = "momentum", **options):
    return make_schedule(
        _settings(name, **options),
        learning_rate=LR0,
        steps_per_epoch=STEPS_PER_EPOCH,
        epochs=EPOCHS,
        first_epoch=FIRST_EPOCH,
        momentum_term=momentum_term,
    )


def rate_at(schedule, step: int) -> float:
    return float(schedule.learning_rate(step))


def close_to(expected):
    return pytest.approx(expected, rel=1e-6, abs=1e-10)


# Formulas, written independently of the implementation (fastai's cosine form for 1cycle).


def onecycle_formula(step: float, *, pct=0.25, div=25.0, final=1e4, anneal="cos") -> float:
    peak_step = pct * (TOTAL - 1)
    start, end = LR0 / div, LR0 / div / final
    if step <= peak_step:
        low, high, fraction = start, LR0, step / peak_step
    else:
        low, high, fraction = LR0, end, min((step - peak_step) / (TOTAL - 1 - peak_step), 1.0)
    if anneal == "cos":
        return high + (low - high) / 2 * (1 + math.cos(math.pi * fraction))
    return low + (high - low) * fraction


def one_weight_model(optimizer, *, run_eagerly: bool = False) -> keras.Model:
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])
    model.compile(optimizer=optimizer, loss="mse", run_eagerly=run_eagerly)
    return model


def fit_one_weight(schedule, optimizer, *, extra_callbacks=(), run_eagerly: bool = False):
    """Fits the one-weight model for EPOCHS epochs from FIRST_EPOCH; per epoch: the LR used and the weight."""
    model = one_weight_model(optimizer, run_eagerly=run_eagerly)
    used, weights = [], []

    def record(epoch: int, logs) -> None:
        used.append(learning_rate_used(model.optimizer))
        weights.append(float(model.get_weights()[0][0, 0]))

    # The recorder goes first, as in the pipeline: a plateau callback lowers the LR at the same epoch end.
    callbacks = [*extra_callbacks, keras.callbacks.LambdaCallback(on_epoch_end=record), *schedule.callbacks]
    model.fit(
        np.ones((STEPS_PER_EPOCH, 1), "float32"),
        np.zeros((STEPS_PER_EPOCH, 1), "float32"),
        batch_size=1,
        initial_epoch=FIRST_EPOCH,
        epochs=FIRST_EPOCH + EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    return used, weights, model


def closed_form_smoothing(losses: list[float], beta: float) -> np.ndarray:
    """smoothed_i = sum_j (1 - beta) beta**(i - j) loss_j / (1 - beta**(i + 1)), computed as one matrix product."""
    index = np.arange(len(losses))
    powers = np.tril(beta ** (index[:, None] - index[None, :]).clip(min=0))
    return (1 - beta) * powers @ np.asarray(losses) / (1 - beta ** (index + 1))

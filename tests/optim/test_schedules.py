"""pipeline/optim/schedules.py: each schedule's formula at chosen steps, and what a real `fit` used, step by
step (the harness, and why its tolerances are tight, is in conftest.py)."""

from __future__ import annotations

import inspect
import math

import keras
import numpy as np
import pytest

from pipeline.optim.one_cycle import MomentumCycler, OneCycle
from pipeline.optim.schedules import PowerDecay, learning_rate_used, make_schedule
from pipeline.params.schedule import SCHEDULE_MODELS
from tests.conftest import schedule_settings as _settings
from tests.optim.conftest import (
    EPOCHS,
    FIRST_EPOCH,
    LR0,
    STEPS_PER_EPOCH,
    TOTAL,
    close_to,
    fit_one_weight,
    one_weight_model,
    onecycle_formula,
    phase_schedule,
    rate_at,
)

# Formulas, written independently of the implementation (1cycle's is in conftest.py).


def _cosine_formula(step: int, *, warmup_steps: int, alpha: float, warmup_start: float) -> float:
    if step < warmup_steps:
        return LR0 * warmup_start + (LR0 - LR0 * warmup_start) * step / warmup_steps
    progress = (step - warmup_steps) / (TOTAL - warmup_steps)
    return LR0 * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * progress)) + alpha)


# Registry and import.


@pytest.mark.parametrize("model", SCHEDULE_MODELS, ids=lambda model: model.model_fields["name"].annotation.__args__[0])
def test_every_schedule_of_the_params_schema_is_built(model) -> None:
    name = model.model_fields["name"].annotation.__args__[0]
    options = {"boundaries": [2], "factors": [1.0, 0.1]} if name == "piecewise" else {}
    schedule = phase_schedule(name, **options)
    assert (
        schedule.learning_rate == LR0
        if name in ("constant", "step_drop", "performance")
        else callable(schedule.learning_rate)
    )


def test_a_name_no_schedule_has_is_refused() -> None:
    class Unknown:
        name = "triangular"

    with pytest.raises(ValueError, match="unknown schedule 'triangular'"):
        make_schedule(Unknown(), learning_rate=LR0, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS)


# Each schedule's formula at chosen steps.


def test_constant_is_the_phase_learning_rate() -> None:
    schedule = phase_schedule("constant")
    assert schedule.learning_rate == LR0
    assert schedule.callbacks == ()


@pytest.mark.parametrize(("decay_epochs", "power"), [(1.0, 1.0), (2.5, 0.5), (0.5, 2.0)])
def test_power_formula(decay_epochs: float, power: float) -> None:
    schedule = phase_schedule("power", decay_epochs=decay_epochs, power=power)
    assert isinstance(schedule.learning_rate, PowerDecay)
    for step in (0, 1, 7, 19):
        assert rate_at(schedule, step) == close_to(LR0 / (1 + step / (decay_epochs * STEPS_PER_EPOCH)) ** power), step


def test_exponential_formula() -> None:
    schedule = phase_schedule("exponential", decay_epochs=2.0)
    for step in (0, 3, 8, 19):
        assert rate_at(schedule, step) == close_to(LR0 * 0.1 ** (step / (2.0 * STEPS_PER_EPOCH))), step


def test_piecewise_changes_factor_at_the_first_step_of_each_boundary() -> None:
    schedule = phase_schedule("piecewise", boundaries=[1, 2.5], factors=[1.0, 0.5, 0.1])
    # Boundary 1 epoch -> step 4, boundary 2.5 epochs -> step 10: those steps already use the next factor.
    expected = {0: 1.0, 3: 1.0, 4: 0.5, 9: 0.5, 10: 0.1, 19: 0.1}
    for step, factor in expected.items():
        assert rate_at(schedule, step) == close_to(LR0 * factor), step


@pytest.mark.parametrize(("warmup_fraction", "warmup_steps"), [(0.2, 4), (0.1, 2), (0.0, 0)])
def test_cosine_with_warmup_formula(warmup_fraction: float, warmup_steps: int) -> None:
    schedule = phase_schedule("cosine", warmup_fraction=warmup_fraction, alpha=0.1, warmup_start=0.1)
    for step in (0, 1, 2, 4, 5, 12, 19):
        expected = _cosine_formula(step, warmup_steps=warmup_steps, alpha=0.1, warmup_start=0.1)
        assert rate_at(schedule, step) == close_to(expected), step


@pytest.mark.parametrize(
    "schedule",
    [
        PowerDecay(0.1, decay_steps=3.0, power=2.0),
        OneCycle(0.1, total_steps=30, pct_start=0.4, anneal="linear", max_momentum=0.9, min_momentum=0.8),
    ],
)
def test_our_schedules_round_trip_through_keras_serialisation(schedule) -> None:
    config = schedule.get_config()
    assert list(config) == list(inspect.signature(type(schedule)).parameters)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    rebuilt = type(schedule).from_config(config)
    for copy in (restored, rebuilt):
        assert type(copy) is type(schedule)
        assert copy.get_config() == config
        assert [float(copy(step)) for step in (0, 7, 29)] == [float(schedule(step)) for step in (0, 7, 29)]


# Refusals: every message names the option, quotes the value and says what is allowed.


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        # What only the phase's length can tell (the settings themselves are checked by the params schema).
        ("piecewise", {"boundaries": [1, 5], "factors": [1, 1, 1]}, r"inside the phase \(each < epochs=5\)"),
        ("piecewise", {"boundaries": [1.0, 1.1], "factors": [1, 1, 1]}, r"distinct steps after step 0.*\[4, 4\]"),
        ("piecewise", {"boundaries": [0.1], "factors": [1, 1]}, r"they start at steps \[0\]"),
    ],
)
def test_bad_schedules_are_refused(name: str, options, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        phase_schedule(name, **options)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"learning_rate": 0.0}, "`learning_rate` must be a number > 0. Received: learning_rate=0.0"),
        ({"steps_per_epoch": 0}, "`steps_per_epoch` must be an integer >= 1. Received: steps_per_epoch=0"),
        ({"epochs": 2.0}, "`epochs` must be an integer >= 1. Received: epochs=2.0"),
        ({"first_epoch": -1}, "`first_epoch` must be an integer >= 0. Received: first_epoch=-1"),
    ],
)
def test_bad_phases_are_refused(arguments, message: str) -> None:
    phase = {"learning_rate": LR0, "steps_per_epoch": STEPS_PER_EPOCH, "epochs": EPOCHS, **arguments}
    with pytest.raises(ValueError, match=message):
        make_schedule(_settings("constant"), **phase)


# Real fits, starting at a later global epoch: the LR each epoch's last step used, and the weights.


def _sgd_weights(rates: list[float]) -> list[float]:
    """Plain SGD on loss w ** 2 from w = 1: w <- w - rate * 2w; the weight after each epoch."""
    weight, weights = np.float32(1.0), []
    for step, rate in enumerate(rates):
        weight = weight - np.float32(rate) * (np.float32(2.0) * weight)
        if (step + 1) % STEPS_PER_EPOCH == 0:
            weights.append(float(weight))
    return weights


_STEP_FORMULAS = {
    "power": ({"decay_epochs": 0.5, "power": 2.0}, lambda t: LR0 / (1 + t / 2) ** 2),
    "exponential": ({"decay_epochs": 2.0}, lambda t: LR0 * 0.1 ** (t / 8)),
    "piecewise": (
        {"boundaries": [1, 3], "factors": [1, 4, 0.5]},
        lambda t: LR0 * (1 if t < 4 else 4 if t < 12 else 0.5),
    ),
    "onecycle": ({"cycle_momentum": False}, onecycle_formula),
    "cosine": (
        {"warmup_fraction": 0.2, "alpha": 0.2, "warmup_start": 0.25},
        lambda t: _cosine_formula(t, warmup_steps=4, alpha=0.2, warmup_start=0.25),
    ),
}


@pytest.mark.parametrize("name", list(_STEP_FORMULAS))
def test_fit_uses_the_step_schedule_at_every_step(name: str) -> None:
    options, formula = _STEP_FORMULAS[name]
    schedule = phase_schedule(name, **options)
    used, weights, _ = fit_one_weight(schedule, keras.optimizers.SGD(learning_rate=schedule.learning_rate))
    # The phase's step t restarts at 0 although the fit starts at global epoch 3.
    assert used == close_to([formula((epoch + 1) * STEPS_PER_EPOCH - 1) for epoch in range(EPOCHS)])
    assert weights == close_to(_sgd_weights([formula(step) for step in range(TOTAL)]))


def test_step_drop_counts_epochs_from_the_phase_start() -> None:
    schedule = phase_schedule("step_drop", drop=0.5, epochs_drop=2)
    assert isinstance(schedule.callbacks[0], keras.callbacks.LearningRateScheduler)
    used, weights, _ = fit_one_weight(schedule, keras.optimizers.SGD(learning_rate=LR0))
    rates = [LR0 * 0.5 ** math.floor((1 + epoch) / 2) for epoch in range(EPOCHS)]  # 1, 1/2, 1/2, 1/4, 1/4
    assert used == close_to(rates)
    assert weights == close_to(_sgd_weights([rate for rate in rates for _ in range(STEPS_PER_EPOCH)]))


def test_step_drop_refuses_a_fit_that_starts_before_its_phase() -> None:
    schedule = make_schedule(
        _settings("step_drop"),
        learning_rate=LR0,
        steps_per_epoch=STEPS_PER_EPOCH,
        epochs=EPOCHS,
        first_epoch=FIRST_EPOCH + 1,
    )
    with pytest.raises(ValueError, match="phase whose first epoch is first_epoch=4; fit reached epoch 3"):
        fit_one_weight(schedule, keras.optimizers.SGD(learning_rate=LR0))


def test_performance_scheduling_lowers_the_rate_after_a_plateau() -> None:
    schedule = phase_schedule("performance", factor=0.5, patience=1, min_lr=LR0 / 5)
    assert isinstance(schedule.callbacks[0], keras.callbacks.ReduceLROnPlateau)
    scripted = iter([1.0, 1.0, 0.5, 0.6, 0.7])

    def script_validation_loss(epoch: int, logs) -> None:
        logs["val_loss"] = next(scripted)

    # Improves, stalls (patience 1: halve), improves, stalls (halve), stalls (halve, floored at min_lr).
    used, weights, model = fit_one_weight(
        schedule,
        keras.optimizers.SGD(learning_rate=LR0),
        extra_callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=script_validation_loss)],
    )
    rates = [LR0, LR0, LR0 / 2, LR0 / 2, LR0 / 4]
    assert used == close_to(rates)
    assert weights == close_to(_sgd_weights([rate for rate in rates for _ in range(STEPS_PER_EPOCH)]))
    assert learning_rate_used(model.optimizer) == close_to(LR0 / 5)


def test_cycle_momentum_off_adds_no_callback() -> None:
    assert phase_schedule("onecycle", cycle_momentum=False).callbacks == ()
    (cycler,) = phase_schedule("onecycle", momentum_term="beta_1").callbacks
    assert isinstance(cycler, MomentumCycler)
    assert cycler.attribute == "beta_1"
    with pytest.raises(ValueError, match="cycles momentum, which needs the optimizer's momentum term"):
        phase_schedule("onecycle", momentum_term=None)


def test_learning_rate_used_is_the_last_steps_rate() -> None:
    schedule = phase_schedule("exponential", decay_epochs=1.0)
    optimizer = keras.optimizers.SGD(learning_rate=schedule.learning_rate)
    model = one_weight_model(optimizer)
    assert learning_rate_used(optimizer) == close_to(LR0)  # before any step: the first step's
    model.fit(np.ones((3, 1)), np.zeros((3, 1)), batch_size=1, epochs=1, verbose=0)
    assert learning_rate_used(optimizer) == close_to(LR0 * 0.1 ** (2 / 4))
    # Keras' own property is the next step's rate.
    assert float(optimizer.learning_rate) == close_to(LR0 * 0.1 ** (3 / 4))

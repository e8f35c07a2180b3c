"""Learning-rate schedules: each formula at chosen steps, and the LR a real `fit` used each epoch.

Schedules compute in float32, so "equals its formula" means within 1e-7 absolute and 1e-5 relative.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pipeline.schedules import (
    SCHEDULE_NAMES,
    MomentumCycler,
    OneCycle,
    PowerDecay,
    make_schedule,
)

LR0 = 0.02
STEPS_PER_EPOCH = 4
EPOCHS = 5
TOTAL = STEPS_PER_EPOCH * EPOCHS


def _schedule(name: str, **options):
    return make_schedule(
        name, learning_rate=LR0, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS, first_epoch=3, options=options
    )


def _at(schedule, step: int) -> float:
    return float(schedule.learning_rate(step))


def _close(expected: float):
    return pytest.approx(expected, rel=1e-5, abs=1e-7)


def _onecycle_formula(step: float, *, pct=0.25, div=25.0, final=1e4, anneal="cos") -> float:
    warm = pct * TOTAL
    start, end = LR0 / div, LR0 / div / final

    def mix(a: float, b: float, fraction: float) -> float:
        if anneal == "cos":
            fraction = (1 - math.cos(math.pi * fraction)) / 2
        return a + (b - a) * fraction

    if step < warm:
        return mix(start, LR0, step / warm)
    return mix(LR0, end, min((step - warm) / (TOTAL - warm), 1.0))


def test_registry_order() -> None:
    assert SCHEDULE_NAMES == (
        "constant",
        "power",
        "exponential",
        "piecewise",
        "step_drop",
        "performance",
        "onecycle",
        "cosine",
    )


def test_constant_is_the_phase_learning_rate() -> None:
    schedule = _schedule("constant")
    assert schedule.learning_rate == LR0
    assert schedule.callbacks == ()


@pytest.mark.parametrize("step", [0, 1, 7, 19])
@pytest.mark.parametrize(("decay_epochs", "power"), [(1.0, 1.0), (2.5, 0.5), (0.5, 2.0)])
def test_power_formula(step: int, decay_epochs: float, power: float) -> None:
    schedule = _schedule("power", decay_epochs=decay_epochs, power=power)
    expected = LR0 / (1 + step / (decay_epochs * STEPS_PER_EPOCH)) ** power
    assert _at(schedule, step) == _close(expected)


@pytest.mark.parametrize("step", [0, 3, 8, 19])
def test_exponential_formula(step: int) -> None:
    schedule = _schedule("exponential", decay_epochs=2.0)
    assert _at(schedule, step) == _close(LR0 * 0.1 ** (step / 8))


def test_piecewise_formula() -> None:
    schedule = _schedule("piecewise", boundaries=[1, 2.5], factors=[1.0, 0.5, 0.1])
    # Boundaries at steps 4 and 10; Keras' PiecewiseConstantDecay switches after the boundary step.
    expected = {0: LR0, 4: LR0, 5: LR0 * 0.5, 10: LR0 * 0.5, 11: LR0 * 0.1, 19: LR0 * 0.1}
    for step, value in expected.items():
        assert _at(schedule, step) == _close(value), step


@pytest.mark.parametrize("step", [0, 2, 5, 9, 19])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_onecycle_formula(step: int, anneal: str) -> None:
    schedule = _schedule("onecycle", anneal=anneal)
    assert _at(schedule, step) == _close(_onecycle_formula(step, anneal=anneal))


def test_onecycle_peaks_at_lr0_and_momentum_runs_the_other_way() -> None:
    cycle = OneCycle(LR0, total_steps=TOTAL, pct_start=0.25)
    assert float(cycle(5)) == _close(LR0)
    assert float(cycle(0)) == _close(LR0 / 25)
    assert cycle.momentum_at(0) == _close(0.95)
    assert cycle.momentum_at(5) == _close(0.85)
    assert cycle.momentum_at(TOTAL) == _close(0.95)


@pytest.mark.parametrize("step", [0, 2, 4, 5, 12, 19])
def test_cosine_with_warmup_formula(step: int) -> None:
    schedule = _schedule("cosine", warmup_epochs=1.0, alpha=0.1, warmup_start=0.1)
    warm = STEPS_PER_EPOCH
    if step < warm:
        expected = LR0 * 0.1 + (LR0 - LR0 * 0.1) * step / warm
    else:
        progress = (step - warm) / (TOTAL - warm)
        expected = LR0 * ((1 - 0.1) * 0.5 * (1 + math.cos(math.pi * progress)) + 0.1)
    assert _at(schedule, step) == _close(expected)


@pytest.mark.parametrize("schedule", [PowerDecay(0.1, decay_steps=3.0, power=2.0), OneCycle(0.1, total_steps=30)])
def test_our_schedules_round_trip_through_keras_serialisation(schedule) -> None:
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    assert float(restored(7)) == float(schedule(7))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("triangular", {}, "unknown schedule 'triangular'; registered schedules: constant, power"),
        ("cosine", {"warmup_steps": 3}, "schedule cosine does not take 'warmup_steps'; it takes: warmup_epochs, alpha"),
        ("piecewise", {"boundaries": [1]}, "schedule piecewise needs factors"),
        ("cosine", {"warmup_epochs": 5}, "cosine warmup_epochs is 5, as long as the phase"),
        ("power", {"decay_epochs": 0}, "`decay_steps` must be > 0. Received: decay_steps=0"),
    ],
)
def test_bad_schedules_are_refused(name: str, options, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _schedule(name, **options)


# What a real fit used: the LR of each epoch's last step, read the way the pipeline's recorder reads it.


def _fit(schedule, optimizer, *, epochs: int = EPOCHS, first_epoch: int = 3, monitor_values=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    used = []
    recorder = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: used.append(schedule.learning_rate_used(model.optimizer))
    )
    callbacks = [recorder, *schedule.callbacks]
    if monitor_values is not None:
        # Feeds the plateau callback a scripted validation loss.
        values = iter(monitor_values)
        callbacks.insert(
            0, keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(val_loss=next(values)))
        )
    x = np.random.default_rng(0).normal(size=(8 * STEPS_PER_EPOCH // 4 * 4, 3)).astype("float32")[: 2 * STEPS_PER_EPOCH]
    y = np.arange(len(x)) % 2
    model.fit(
        x,
        y,
        batch_size=2,
        initial_epoch=first_epoch,
        epochs=first_epoch + epochs,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    return used, model


def test_fit_uses_the_schedule_step_by_step() -> None:
    schedule = _schedule("exponential", decay_epochs=2.0)
    used, _ = _fit(schedule, keras.optimizers.SGD(learning_rate=schedule.learning_rate))
    expected = [LR0 * 0.1 ** (((epoch + 1) * STEPS_PER_EPOCH - 1) / 8) for epoch in range(EPOCHS)]
    assert used == _close(expected)


def test_step_drop_counts_epochs_from_the_phase_start() -> None:
    schedule = make_schedule(
        "step_drop",
        learning_rate=LR0,
        steps_per_epoch=STEPS_PER_EPOCH,
        epochs=EPOCHS,
        first_epoch=3,
        options={"drop": 0.5, "epochs_drop": 2},
    )
    used, _ = _fit(schedule, keras.optimizers.SGD(learning_rate=LR0))
    expected = [LR0 * 0.5 ** math.floor((1 + epoch) / 2) for epoch in range(EPOCHS)]
    assert used == _close(expected)


def test_performance_scheduling_halves_the_rate_after_a_plateau() -> None:
    schedule = _schedule("performance", factor=0.5, patience=1)
    # Improves, stalls (patience 1 -> halve), improves, stalls (halve).
    used, _ = _fit(schedule, keras.optimizers.SGD(learning_rate=LR0), monitor_values=[1.0, 1.0, 0.5, 0.6, 0.7])
    # The recorder runs first, so each epoch's LR is the one it trained with.
    assert used == _close([LR0, LR0, LR0 / 2, LR0 / 2, LR0 / 4])


def test_onecycle_momentum_really_drives_the_sgd_update() -> None:
    schedule = _schedule("onecycle", max_momentum=0.95, min_momentum=0.5)
    optimizer = keras.optimizers.SGD(learning_rate=schedule.learning_rate, momentum=0.95)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])
    model.compile(optimizer=optimizer, loss="mse")
    x = np.ones((TOTAL, 1), "float32")
    y = np.zeros((TOTAL, 1), "float32")
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, verbose=0, callbacks=list(schedule.callbacks))
    # numpy SGD with Keras' momentum rule, the scheduled LR and the cycled momentum of each step.
    cycle = schedule.learning_rate
    weight, velocity = 1.0, 0.0
    for step in range(TOTAL):
        gradient = 2 * weight
        velocity = cycle.momentum_at(step) * velocity - float(cycle(step)) * gradient
        weight += velocity
    assert float(model.get_weights()[0][0, 0]) == pytest.approx(weight, rel=1e-5)
    # Held at 0.95 throughout, the weight would differ: the cycle is what the update used.
    fixed_weight, fixed_velocity = 1.0, 0.0
    for step in range(TOTAL):
        fixed_velocity = 0.95 * fixed_velocity - float(cycle(step)) * 2 * fixed_weight
        fixed_weight += fixed_velocity
    assert abs(fixed_weight - weight) > 1e-3


@pytest.mark.parametrize(
    ("optimizer", "term"), [(keras.optimizers.Adam, "beta_1"), (keras.optimizers.RMSprop, "momentum")]
)
def test_momentum_cycler_sets_each_optimizers_term(optimizer, term: str) -> None:
    schedule = _schedule("onecycle")
    built = optimizer(learning_rate=schedule.learning_rate, **({"momentum": 0.9} if term == "momentum" else {}))
    _, model = _fit(schedule, built, epochs=1, first_epoch=0)
    assert float(keras.ops.convert_to_numpy(getattr(model.optimizer, term))) == pytest.approx(
        schedule.learning_rate.momentum_at(STEPS_PER_EPOCH - 1), rel=1e-6
    )


@pytest.mark.parametrize(
    ("optimizer", "message"),
    [
        (lambda rate: keras.optimizers.Adagrad(learning_rate=rate), "Adagrad has no momentum term to cycle"),
        (lambda rate: keras.optimizers.SGD(learning_rate=rate), "SGD has momentum 0.0"),
    ],
)
def test_momentum_cycler_refuses_optimizers_without_momentum(optimizer, message: str) -> None:
    schedule = _schedule("onecycle")
    with pytest.raises(ValueError, match=message):
        _fit(schedule, optimizer(schedule.learning_rate), epochs=1)


def test_cycle_momentum_off_adds_no_callback() -> None:
    schedule = _schedule("onecycle", cycle_momentum=False)
    assert schedule.callbacks == ()
    assert isinstance(_schedule("onecycle").callbacks[0], MomentumCycler)

"""Learning-rate schedules: each formula at chosen steps, and what a real `fit` used, step by step.

Schedules compute in float32 (resolution 6e-8 relative), so "equals its formula" means within 1e-6
relative (and 1e-10 absolute, for values near zero): tighter than 1e-7 absolute for every LR here.
The fits train one weight w on loss w ** 2 (gradient 2w) with plain SGD, so the weight after each epoch
is a product over the LR of every step, recomputed here in numpy: a schedule that was not really used
by every step would not match.
"""

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

LR0 = 0.02
STEPS_PER_EPOCH = 4
EPOCHS = 5
TOTAL = STEPS_PER_EPOCH * EPOCHS
FIRST_EPOCH = 3  # fits start here, as a later phase of the pipeline does


def _schedule(name: str, momentum_term: str = "momentum", **options):
    return make_schedule(
        _settings(name, **options),
        learning_rate=LR0,
        steps_per_epoch=STEPS_PER_EPOCH,
        epochs=EPOCHS,
        first_epoch=FIRST_EPOCH,
        momentum_term=momentum_term,
    )


def _at(schedule, step: int) -> float:
    return float(schedule.learning_rate(step))


def _close(expected):
    return pytest.approx(expected, rel=1e-6, abs=1e-10)


# Formulas, written independently of the implementation (fastai's cosine form for 1cycle).


def _onecycle_formula(step: float, *, pct=0.25, div=25.0, final=1e4, anneal="cos") -> float:
    peak_step = pct * (TOTAL - 1)
    start, end = LR0 / div, LR0 / div / final
    if step <= peak_step:
        low, high, fraction = start, LR0, step / peak_step
    else:
        low, high, fraction = LR0, end, min((step - peak_step) / (TOTAL - 1 - peak_step), 1.0)
    if anneal == "cos":
        return high + (low - high) / 2 * (1 + math.cos(math.pi * fraction))
    return low + (high - low) * fraction


def _onecycle_momentum_formula(step: float, *, pct=0.25, high=0.95, low=0.85) -> float:
    peak_step = pct * (TOTAL - 1)
    if step <= peak_step:
        start, end, fraction = high, low, step / peak_step
    else:
        start, end, fraction = low, high, min((step - peak_step) / (TOTAL - 1 - peak_step), 1.0)
    return end + (start - end) / 2 * (1 + math.cos(math.pi * fraction))


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
    schedule = _schedule(name, **options)
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
    schedule = _schedule("constant")
    assert schedule.learning_rate == LR0
    assert schedule.callbacks == ()


@pytest.mark.parametrize(("decay_epochs", "power"), [(1.0, 1.0), (2.5, 0.5), (0.5, 2.0)])
def test_power_formula(decay_epochs: float, power: float) -> None:
    schedule = _schedule("power", decay_epochs=decay_epochs, power=power)
    assert isinstance(schedule.learning_rate, PowerDecay)
    for step in (0, 1, 7, 19):
        assert _at(schedule, step) == _close(LR0 / (1 + step / (decay_epochs * STEPS_PER_EPOCH)) ** power), step


def test_exponential_formula() -> None:
    schedule = _schedule("exponential", decay_epochs=2.0)
    for step in (0, 3, 8, 19):
        assert _at(schedule, step) == _close(LR0 * 0.1 ** (step / (2.0 * STEPS_PER_EPOCH))), step


def test_piecewise_changes_factor_at_the_first_step_of_each_boundary() -> None:
    schedule = _schedule("piecewise", boundaries=[1, 2.5], factors=[1.0, 0.5, 0.1])
    # Boundary 1 epoch -> step 4, boundary 2.5 epochs -> step 10: those steps already use the next factor.
    expected = {0: 1.0, 3: 1.0, 4: 0.5, 9: 0.5, 10: 0.1, 19: 0.1}
    for step, factor in expected.items():
        assert _at(schedule, step) == _close(LR0 * factor), step


@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_onecycle_formula(anneal: str) -> None:
    schedule = _schedule("onecycle", anneal=anneal, pct_start=0.3, div_factor=10.0, final_div_factor=100.0)
    for step in (0, 2, 5, 6, 12, 18, 19, 25):
        expected = _onecycle_formula(step, pct=0.3, div=10.0, final=100.0, anneal=anneal)
        assert _at(schedule, step) == _close(expected), step


def test_onecycle_starts_peaks_and_ends_where_documented() -> None:
    cycle = OneCycle(LR0, total_steps=9, pct_start=0.25)  # peak at step 0.25 * 8 = 2
    assert float(cycle(0)) == _close(LR0 / 25)
    assert float(cycle(2)) == _close(LR0)
    # The last step uses the final LR, 8e-8, to float32 precision (no cancellation against lr0).
    assert float(cycle(8)) == _close(LR0 / 25 / 1e4)
    assert [cycle.momentum_at(step) for step in (0, 2, 8)] == _close([0.95, 0.85, 0.95])


def test_onecycle_momentum_formula() -> None:
    cycle = _schedule("onecycle", max_momentum=0.9, min_momentum=0.6).learning_rate
    for step in (0, 1, 4, 5, 10, 19, 30):
        assert cycle.momentum_at(step) == _close(_onecycle_momentum_formula(step, high=0.9, low=0.6)), step


@pytest.mark.parametrize(("warmup_fraction", "warmup_steps"), [(0.2, 4), (0.1, 2), (0.0, 0)])
def test_cosine_with_warmup_formula(warmup_fraction: float, warmup_steps: int) -> None:
    schedule = _schedule("cosine", warmup_fraction=warmup_fraction, alpha=0.1, warmup_start=0.1)
    for step in (0, 1, 2, 4, 5, 12, 19):
        expected = _cosine_formula(step, warmup_steps=warmup_steps, alpha=0.1, warmup_start=0.1)
        assert _at(schedule, step) == _close(expected), step


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
        _schedule(name, **options)


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


def test_onecycle_needs_two_steps() -> None:
    with pytest.raises(ValueError, match="at least 2 steps .* Received: steps_per_epoch=1, epochs=1"):
        make_schedule(_settings("onecycle"), learning_rate=LR0, steps_per_epoch=1, epochs=1, momentum_term="momentum")
    with pytest.raises(ValueError, match="Argument `total_steps` must be >= 2. Received: total_steps=1"):
        OneCycle(LR0, total_steps=1)


# Real fits, starting at a later global epoch: the LR each epoch's last step used, and the weights.


def _scalar_model(optimizer, *, run_eagerly: bool = False) -> keras.Model:
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])
    model.compile(optimizer=optimizer, loss="mse", run_eagerly=run_eagerly)
    return model


def _fit(schedule, optimizer, *, extra_callbacks=(), run_eagerly: bool = False):
    """Fits the one-weight model for EPOCHS epochs from FIRST_EPOCH; per epoch: the LR used and the weight."""
    model = _scalar_model(optimizer, run_eagerly=run_eagerly)
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
    "onecycle": ({"cycle_momentum": False}, _onecycle_formula),
    "cosine": (
        {"warmup_fraction": 0.2, "alpha": 0.2, "warmup_start": 0.25},
        lambda t: _cosine_formula(t, warmup_steps=4, alpha=0.2, warmup_start=0.25),
    ),
}


@pytest.mark.parametrize("name", list(_STEP_FORMULAS))
def test_fit_uses_the_step_schedule_at_every_step(name: str) -> None:
    options, formula = _STEP_FORMULAS[name]
    schedule = _schedule(name, **options)
    used, weights, _ = _fit(schedule, keras.optimizers.SGD(learning_rate=schedule.learning_rate))
    # The phase's step t restarts at 0 although the fit starts at global epoch 3.
    assert used == _close([formula((epoch + 1) * STEPS_PER_EPOCH - 1) for epoch in range(EPOCHS)])
    assert weights == _close(_sgd_weights([formula(step) for step in range(TOTAL)]))


def test_step_drop_counts_epochs_from_the_phase_start() -> None:
    schedule = _schedule("step_drop", drop=0.5, epochs_drop=2)
    assert isinstance(schedule.callbacks[0], keras.callbacks.LearningRateScheduler)
    used, weights, _ = _fit(schedule, keras.optimizers.SGD(learning_rate=LR0))
    rates = [LR0 * 0.5 ** math.floor((1 + epoch) / 2) for epoch in range(EPOCHS)]  # 1, 1/2, 1/2, 1/4, 1/4
    assert used == _close(rates)
    assert weights == _close(_sgd_weights([rate for rate in rates for _ in range(STEPS_PER_EPOCH)]))


def test_step_drop_refuses_a_fit_that_starts_before_its_phase() -> None:
    schedule = make_schedule(
        _settings("step_drop"),
        learning_rate=LR0,
        steps_per_epoch=STEPS_PER_EPOCH,
        epochs=EPOCHS,
        first_epoch=FIRST_EPOCH + 1,
    )
    with pytest.raises(ValueError, match="phase whose first epoch is first_epoch=4; fit reached epoch 3"):
        _fit(schedule, keras.optimizers.SGD(learning_rate=LR0))


def test_performance_scheduling_lowers_the_rate_after_a_plateau() -> None:
    schedule = _schedule("performance", factor=0.5, patience=1, min_lr=LR0 / 5)
    assert isinstance(schedule.callbacks[0], keras.callbacks.ReduceLROnPlateau)
    scripted = iter([1.0, 1.0, 0.5, 0.6, 0.7])

    def script_validation_loss(epoch: int, logs) -> None:
        logs["val_loss"] = next(scripted)

    # Improves, stalls (patience 1: halve), improves, stalls (halve), stalls (halve, floored at min_lr).
    used, weights, model = _fit(
        schedule,
        keras.optimizers.SGD(learning_rate=LR0),
        extra_callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=script_validation_loss)],
    )
    rates = [LR0, LR0, LR0 / 2, LR0 / 2, LR0 / 4]
    assert used == _close(rates)
    assert weights == _close(_sgd_weights([rate for rate in rates for _ in range(STEPS_PER_EPOCH)]))
    assert learning_rate_used(model.optimizer) == _close(LR0 / 5)


@pytest.mark.parametrize("loss_scaled", [False, True])
def test_onecycle_momentum_really_drives_the_sgd_update(loss_scaled: bool) -> None:
    schedule = _schedule("onecycle", max_momentum=0.95, min_momentum=0.5)
    cycle = schedule.learning_rate
    optimizer = keras.optimizers.SGD(learning_rate=cycle, momentum=0.95)
    if loss_scaled:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    used, weights, _ = _fit(schedule, optimizer)
    assert used == _close([_onecycle_formula((epoch + 1) * STEPS_PER_EPOCH - 1) for epoch in range(EPOCHS)])

    def sgd_momentum_weights(momenta: list[float]) -> list[float]:
        # Keras' rule: velocity <- momentum * velocity - lr * gradient; w <- w + velocity.
        weight, velocity, per_epoch = 1.0, 0.0, []
        for step in range(TOTAL):
            velocity = momenta[step] * velocity - _onecycle_formula(step) * 2 * weight
            weight += velocity
            if (step + 1) % STEPS_PER_EPOCH == 0:
                per_epoch.append(weight)
        return per_epoch

    cycled = [_onecycle_momentum_formula(step, low=0.5) for step in range(TOTAL)]
    assert weights == pytest.approx(sgd_momentum_weights(cycled), rel=1e-6)
    # Held at 0.95 (the value Keras would have baked into the traced step), the weights differ by far more.
    held = sgd_momentum_weights([0.95] * TOTAL)
    assert abs(held[-1] - weights[-1]) > 100 * 1e-6 * abs(weights[-1])
    # After fit the optimiser holds a plain float again (the last step's momentum) and no extra variable.
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    assert type(inner.momentum) is float
    assert inner.momentum == _close(0.95)
    assert [variable.name.endswith("kernel_momentum") for variable in inner.variables] == [False, True]


@pytest.mark.parametrize(
    ("optimizer_class", "options"),
    [
        (keras.optimizers.Adam, {}),
        (keras.optimizers.AdamW, {}),
        (keras.optimizers.Adamax, {}),
        (keras.optimizers.Nadam, {}),
        (keras.optimizers.RMSprop, {"momentum": 0.9}),
    ],
)
def test_momentum_cycler_drives_every_optimizers_momentum_term(optimizer_class, options) -> None:
    term = "beta_1" if "momentum" not in options else "momentum"
    schedule = _schedule("onecycle", momentum_term=term, max_momentum=0.95, min_momentum=0.5)
    cycle = schedule.learning_rate
    _, traced_weights, traced = _fit(schedule, optimizer_class(learning_rate=cycle, **options))

    # Reference: the same optimiser run eagerly, its float term set before each step (eagerly, Keras reads it
    # at every step); the traced fit with the cycler must match it.
    reference_optimizer = optimizer_class(learning_rate=cycle, **options)

    def set_float(batch: int, logs) -> None:
        setattr(reference_optimizer, term, cycle.momentum_at(int(reference_optimizer.iterations)))

    _, reference_weights, _ = _fit(
        make_schedule(_settings("constant"), learning_rate=LR0, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS),
        reference_optimizer,
        extra_callbacks=[keras.callbacks.LambdaCallback(on_train_batch_begin=set_float)],
        run_eagerly=True,
    )
    assert traced_weights == pytest.approx(reference_weights, rel=1e-6)
    # And a fit that kept the constructor's momentum term ends elsewhere.
    _, fixed_weights, _ = _fit(
        make_schedule(_settings("constant"), learning_rate=LR0, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS),
        optimizer_class(learning_rate=cycle, **{term: 0.95, **{k: v for k, v in options.items() if k != term}}),
    )
    assert abs(fixed_weights[-1] - traced_weights[-1]) > 1e-3 * abs(traced_weights[-1])
    assert getattr(traced.optimizer, term) == _close(cycle.momentum_at(TOTAL - 1))


@pytest.mark.parametrize(
    ("optimizer", "term", "message"),
    [
        (
            keras.optimizers.Adagrad,
            "beta_1",
            "Cannot cycle the momentum of Adagrad: it has no momentum term `beta_1`.* Received: attribute='beta_1'",
        ),
        (
            keras.optimizers.Adadelta,
            "momentum",
            "Cannot cycle the momentum of Adadelta: it has no momentum term `momentum`",
        ),
        (
            keras.optimizers.SGD,
            "momentum",
            r"Cannot cycle the momentum of SGD: its `momentum` is 0.0, .* Set the optimizer's",
        ),
        (keras.optimizers.RMSprop, "momentum", r"Cannot cycle the momentum of RMSprop: its `momentum` is 0.0"),
    ],
)
def test_momentum_cycler_refuses_optimizers_without_momentum(optimizer, term: str, message: str) -> None:
    schedule = _schedule("onecycle", momentum_term=term)
    with pytest.raises(ValueError, match=message):
        _fit(schedule, optimizer(learning_rate=schedule.learning_rate))


def test_cycle_momentum_off_adds_no_callback() -> None:
    assert _schedule("onecycle", cycle_momentum=False).callbacks == ()
    (cycler,) = _schedule("onecycle", momentum_term="beta_1").callbacks
    assert isinstance(cycler, MomentumCycler)
    assert cycler.attribute == "beta_1"
    with pytest.raises(ValueError, match="cycles momentum, which needs the optimizer's momentum term"):
        _schedule("onecycle", momentum_term=None)


def test_learning_rate_used_is_the_last_steps_rate() -> None:
    schedule = _schedule("exponential", decay_epochs=1.0)
    optimizer = keras.optimizers.SGD(learning_rate=schedule.learning_rate)
    model = _scalar_model(optimizer)
    assert learning_rate_used(optimizer) == _close(LR0)  # before any step: the first step's
    model.fit(np.ones((3, 1)), np.zeros((3, 1)), batch_size=1, epochs=1, verbose=0)
    assert learning_rate_used(optimizer) == _close(LR0 * 0.1 ** (2 / 4))
    # Keras' own property is the next step's rate.
    assert float(optimizer.learning_rate) == _close(LR0 * 0.1 ** (3 / 4))

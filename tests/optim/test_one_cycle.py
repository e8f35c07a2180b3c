"""pipeline/optim/one_cycle.py: the 1cycle learning rate and momentum at chosen steps, and the momentum
cycler really driving each optimiser's update in a traced `fit` (the harness is in conftest.py)."""

from __future__ import annotations

import math

import keras
import pytest

from pipeline.optim.one_cycle import OneCycle
from pipeline.optim.schedules import make_schedule
from tests.conftest import schedule_settings as _settings
from tests.optim.conftest import (
    EPOCHS,
    LR0,
    STEPS_PER_EPOCH,
    TOTAL,
    close_to,
    fit_one_weight,
    onecycle_formula,
    phase_schedule,
    rate_at,
)


@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_onecycle_formula(anneal: str) -> None:
    schedule = phase_schedule("onecycle", anneal=anneal, pct_start=0.3, div_factor=10.0, final_div_factor=100.0)
    for step in (0, 2, 5, 6, 12, 18, 19, 25):
        expected = onecycle_formula(step, pct=0.3, div=10.0, final=100.0, anneal=anneal)
        assert rate_at(schedule, step) == close_to(expected), step


def test_onecycle_starts_peaks_and_ends_where_documented() -> None:
    cycle = OneCycle(LR0, total_steps=9, pct_start=0.25)  # peak at step 0.25 * 8 = 2
    assert float(cycle(0)) == close_to(LR0 / 25)
    assert float(cycle(2)) == close_to(LR0)
    # The last step uses the final LR, 8e-8, to float32 precision (no cancellation against lr0).
    assert float(cycle(8)) == close_to(LR0 / 25 / 1e4)
    assert [cycle.momentum_at(step) for step in (0, 2, 8)] == close_to([0.95, 0.85, 0.95])


def _onecycle_momentum_formula(step: float, *, pct=0.25, high=0.95, low=0.85) -> float:
    peak_step = pct * (TOTAL - 1)
    if step <= peak_step:
        start, end, fraction = high, low, step / peak_step
    else:
        start, end, fraction = low, high, min((step - peak_step) / (TOTAL - 1 - peak_step), 1.0)
    return end + (start - end) / 2 * (1 + math.cos(math.pi * fraction))


def test_onecycle_momentum_formula() -> None:
    cycle = phase_schedule("onecycle", max_momentum=0.9, min_momentum=0.6).learning_rate
    for step in (0, 1, 4, 5, 10, 19, 30):
        assert cycle.momentum_at(step) == close_to(_onecycle_momentum_formula(step, high=0.9, low=0.6)), step


def test_onecycle_needs_two_steps() -> None:
    with pytest.raises(ValueError, match="at least 2 steps .* Received: steps_per_epoch=1, epochs=1"):
        make_schedule(_settings("onecycle"), learning_rate=LR0, steps_per_epoch=1, epochs=1, momentum_term="momentum")
    with pytest.raises(ValueError, match="Argument `total_steps` must be >= 2. Received: total_steps=1"):
        OneCycle(LR0, total_steps=1)


@pytest.mark.parametrize("loss_scaled", [False, True])
def test_onecycle_momentum_really_drives_the_sgd_update(loss_scaled: bool) -> None:
    schedule = phase_schedule("onecycle", max_momentum=0.95, min_momentum=0.5)
    cycle = schedule.learning_rate
    optimizer = keras.optimizers.SGD(learning_rate=cycle, momentum=0.95)
    if loss_scaled:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    used, weights, _ = fit_one_weight(schedule, optimizer)
    assert used == close_to([onecycle_formula((epoch + 1) * STEPS_PER_EPOCH - 1) for epoch in range(EPOCHS)])

    def sgd_momentum_weights(momenta: list[float]) -> list[float]:
        # Keras' rule: velocity <- momentum * velocity - lr * gradient; w <- w + velocity.
        weight, velocity, per_epoch = 1.0, 0.0, []
        for step in range(TOTAL):
            velocity = momenta[step] * velocity - onecycle_formula(step) * 2 * weight
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
    assert inner.momentum == close_to(0.95)
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
    schedule = phase_schedule("onecycle", momentum_term=term, max_momentum=0.95, min_momentum=0.5)
    cycle = schedule.learning_rate
    _, traced_weights, traced = fit_one_weight(schedule, optimizer_class(learning_rate=cycle, **options))

    # Reference: the same optimiser run eagerly, its float term set before each step (eagerly, Keras reads it
    # at every step); the traced fit with the cycler must match it.
    reference_optimizer = optimizer_class(learning_rate=cycle, **options)

    def set_float(batch: int, logs) -> None:
        setattr(reference_optimizer, term, cycle.momentum_at(int(reference_optimizer.iterations)))

    _, reference_weights, _ = fit_one_weight(
        make_schedule(_settings("constant"), learning_rate=LR0, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS),
        reference_optimizer,
        extra_callbacks=[keras.callbacks.LambdaCallback(on_train_batch_begin=set_float)],
        run_eagerly=True,
    )
    assert traced_weights == pytest.approx(reference_weights, rel=1e-6)
    # And a fit that kept the constructor's momentum term ends elsewhere.
    _, fixed_weights, _ = fit_one_weight(
        make_schedule(_settings("constant"), learning_rate=LR0, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS),
        optimizer_class(learning_rate=cycle, **{term: 0.95, **{k: v for k, v in options.items() if k != term}}),
    )
    assert abs(fixed_weights[-1] - traced_weights[-1]) > 1e-3 * abs(traced_weights[-1])
    assert getattr(traced.optimizer, term) == close_to(cycle.momentum_at(TOTAL - 1))


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
    schedule = phase_schedule("onecycle", momentum_term=term)
    with pytest.raises(ValueError, match=message):
        fit_one_weight(schedule, optimizer(learning_rate=schedule.learning_rate))

"""Learning-rate schedules per training phase: the factory, and the schedules Keras lacks.

Why this module exists: fine-tuning runs one `fit` per phase with a fresh optimiser, so
`optimizer.iterations` (t below) restarts at 0 in every phase, and each phase's schedule starts from
that phase's learning rate lr0 (fastai's `fine_tune` runs one 1cycle per phase the same way). Durations
in a schedule's settings (`pipeline.params.schedule`, validated there once) are in epochs of the phase
(fractions allowed) and become steps through `steps_per_epoch`. Epochs stay on the pipeline's one
global axis (`fit(initial_epoch=first_epoch)`): callbacks that see the global epoch subtract the
phase's first epoch.

Keras' own schedules and callbacks are used where they exist: ExponentialDecay, PiecewiseConstantDecay,
CosineDecay (with its linear warm-up), LearningRateScheduler and ReduceLROnPlateau. Keras lacks a
power schedule with an exponent (InverseTimeDecay is c = 1 only: `PowerDecay` here), 1cycle and a
momentum cycle (`pipeline.optim.one_cycle`).

Learning rate of step t of the phase (e: its epoch; T: its steps; w: warm-up steps):

| name        | formula                                                                                |
|-------------|----------------------------------------------------------------------------------------|
| constant    | lr0                                                                                    |
| power       | lr0 / (1 + t/s) ** c                 (s = decay_epochs in steps, c = power)           |
| exponential | lr0 * 0.1 ** (t/s)                   (s = decay_epochs in steps)                      |
| piecewise   | lr0 * factors[i], i = how many boundaries (epochs) the step has reached                |
| step_drop   | lr0 * drop ** floor((1 + e) / epochs_drop)                                             |
| performance | lr0, times `factor` whenever `monitor` has not improved for `patience` epochs         |
| onecycle    | lr0/div_factor at t = 0, up to lr0 at t = pct_start * (T-1), down to                   |
|             | lr0/(div_factor*final_div_factor) at t = T-1 (half cosines or lines), momentum inverse |
| cosine      | warmup_start*lr0 + (lr0 - warmup_start*lr0) * t/w for t < w, then                      |
|             | lr0 * ((1-alpha) * (1 + cos(pi (t-w)/(T-w))) / 2 + alpha)                              |
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keras

from pipeline.optim.one_cycle import MomentumCycler, OneCycle

if TYPE_CHECKING:
    from pipeline.params.schedule import ScheduleParams


@dataclass(frozen=True)
class PhaseSchedule:
    """What one phase's optimiser and `fit` get from its schedule.

    Attributes:
        learning_rate: The optimiser's `learning_rate`: a number, or a Keras schedule of the phase's step.
        callbacks: Callbacks to add to the phase's `fit`, after the history recorder (a plateau callback
            lowers the LR at an epoch's end, and the recorder must read the LR that epoch used first).
    """

    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule
    callbacks: tuple[keras.callbacks.Callback, ...] = ()


def learning_rate_used(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the optimiser's most recent step used.

    Why not `optimizer.learning_rate`: for a schedule, Keras evaluates it at `iterations`, the step
    about to run; the step that just ran is `iterations - 1`. A constant or callback-driven LR is the
    variable's value (callbacks that change it at an epoch's end must run after the reader).

    Args:
        optimizer: A Keras optimiser; a `LossScaleOptimizer` is looked through.

    Returns:
        The LR as a Python float; before any step, the LR the first step will use.
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    # Keras exposes a schedule only through its value at the next step; the schedule object itself is
    # the private `_learning_rate`.
    schedule = getattr(optimizer, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        step = max(int(keras.ops.convert_to_numpy(optimizer.iterations)) - 1, 0)
        return float(keras.ops.convert_to_numpy(schedule(step)))
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class _StepDrop:
    """Drop-based scheduling per epoch, for Keras' LearningRateScheduler: lr0 * drop ** floor((1 + e) / epochs_drop).

    Why a callback rather than a step schedule: the formula is defined per epoch, and Keras'
    LearningRateScheduler sets the LR at each epoch's start without needing `steps_per_epoch`, so it
    stays exact even when an epoch's real step count differs from the estimate (a short last batch,
    a dataset that repeats). `fit` hands it the global epoch (the pipeline passes `initial_epoch`), so
    the phase's first epoch is subtracted.
    """

    def __init__(self, learning_rate: float, *, drop: float, epochs_drop: int, first_epoch: int) -> None:
        self.learning_rate = learning_rate
        self.drop = drop
        self.epochs_drop = epochs_drop
        self.first_epoch = first_epoch

    def __call__(self, epoch: int, current_learning_rate: float | None = None) -> float:
        phase_epoch = epoch - self.first_epoch
        if phase_epoch < 0:
            raise ValueError(
                f"step_drop was made for a phase whose first epoch is first_epoch={self.first_epoch}; "
                f"fit reached epoch {epoch}. Pass fit(initial_epoch=first_epoch)"
            )
        return float(self.learning_rate * self.drop ** math.floor((1 + phase_epoch) / self.epochs_drop))


@keras.saving.register_keras_serializable(package="pipeline")
class PowerDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Power scheduling: `initial_learning_rate / (1 + step / decay_steps) ** power`.

    Why ours: Keras' InverseTimeDecay is this schedule with `power` 1 only.

    Args:
        initial_learning_rate: lr0, the LR of step 0.
        decay_steps: s: after s steps the LR is lr0 / 2 ** power.
        power: c, the exponent.

    Raises:
        ValueError: `initial_learning_rate`, `decay_steps` or `power` not > 0.
    """

    def __init__(self, initial_learning_rate: float, decay_steps: float, power: float = 1.0) -> None:
        super().__init__()
        for argument, value in (
            ("initial_learning_rate", initial_learning_rate),
            ("decay_steps", decay_steps),
            ("power", power),
        ):
            if not value > 0:
                raise ValueError(f"Argument `{argument}` must be > 0. Received: {argument}={value}")
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.power = power

    def __call__(self, step: Any) -> Any:
        step = keras.ops.cast(step, "float32")
        return self.initial_learning_rate / keras.ops.power(1.0 + step / self.decay_steps, self.power)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "power": self.power,
        }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_phase(*, learning_rate: float, steps_per_epoch: int, epochs: int, first_epoch: int) -> None:
    if not (_is_number(learning_rate) and learning_rate > 0):
        raise ValueError(f"Argument `learning_rate` must be a number > 0. Received: learning_rate={learning_rate!r}")
    if not (_is_integer(steps_per_epoch) and steps_per_epoch >= 1):
        raise ValueError(
            f"Argument `steps_per_epoch` must be an integer >= 1. Received: steps_per_epoch={steps_per_epoch!r}"
        )
    if not (_is_integer(epochs) and epochs >= 1):
        raise ValueError(f"Argument `epochs` must be an integer >= 1. Received: epochs={epochs!r}")
    if not (_is_integer(first_epoch) and first_epoch >= 0):
        raise ValueError(f"Argument `first_epoch` must be an integer >= 0. Received: first_epoch={first_epoch!r}")


def _piecewise_first_steps(boundaries: list[float], *, steps_per_epoch: int, epochs: int) -> list[int]:
    """The first step of each new factor: a boundary of b epochs starts at step round(b * steps_per_epoch)."""
    if boundaries[-1] >= epochs:
        raise ValueError(
            f"schedule piecewise: option `boundaries` must lie inside the phase (each < epochs={epochs}), "
            f"or its later factors would never be used. Received: boundaries={boundaries}"
        )
    first_steps = [round(boundary * steps_per_epoch) for boundary in boundaries]
    if first_steps[0] < 1 or any(later <= earlier for earlier, later in itertools.pairwise(first_steps)):
        raise ValueError(
            f"schedule piecewise: option `boundaries` must fall on distinct steps after step 0; with "
            f"steps_per_epoch={steps_per_epoch} they start at steps {first_steps}. Received: boundaries={boundaries}"
        )
    return first_steps


def make_schedule(
    schedule: ScheduleParams,
    *,
    learning_rate: float,
    steps_per_epoch: int,
    epochs: int,
    first_epoch: int = 0,
    momentum_term: str | None = None,
) -> PhaseSchedule:
    """Builds one phase's learning-rate schedule.

    Args:
        schedule: The validated schedule settings (`pipeline.params.schedule`): its `name` (see the
            module's table) and its own options as attributes.
        learning_rate: The phase's learning rate, lr0.
        steps_per_epoch: Optimiser steps in one epoch of the phase.
        epochs: Epochs in the phase.
        first_epoch: The phase's first epoch on the global axis (`fit`'s `initial_epoch`).
        momentum_term: The optimiser's attribute holding its momentum term (`momentum` of SGD and
            RMSprop, `beta_1` of the Adam family), which `onecycle` with `cycle_momentum` cycles.

    Returns:
        The optimiser's learning rate (a number or a Keras schedule) and the callbacks for the phase's
        `fit`. For `onecycle` with `cycle_momentum`, the optimiser's momentum term must be > 0; `fit`
        raises otherwise.

    Raises:
        ValueError: A phase too short for the settings (piecewise boundaries that do not fall on distinct
            steps inside it, a 1cycle of fewer than 2 steps), a cycled momentum without `momentum_term`,
            or an unknown schedule name.
    """
    _check_phase(learning_rate=learning_rate, steps_per_epoch=steps_per_epoch, epochs=epochs, first_epoch=first_epoch)
    learning_rate = float(learning_rate)
    total_steps = steps_per_epoch * epochs
    schedules = keras.optimizers.schedules
    name = schedule.name
    if name == "constant":
        return PhaseSchedule(learning_rate)
    if name == "power":
        decay_steps = schedule.decay_epochs * steps_per_epoch
        return PhaseSchedule(PowerDecay(learning_rate, decay_steps, power=schedule.power))
    if name == "exponential":
        decay_steps = schedule.decay_epochs * steps_per_epoch
        return PhaseSchedule(schedules.ExponentialDecay(learning_rate, decay_steps=decay_steps, decay_rate=0.1))
    if name == "piecewise":
        first_steps = _piecewise_first_steps(list(schedule.boundaries), steps_per_epoch=steps_per_epoch, epochs=epochs)
        # PiecewiseConstantDecay switches after its boundary (values[i + 1] from step boundary + 1), so the
        # boundary passed is the last step of the previous factor.
        values = [learning_rate * factor for factor in schedule.factors]
        return PhaseSchedule(schedules.PiecewiseConstantDecay([step - 1 for step in first_steps], values))
    if name == "step_drop":
        rate = _StepDrop(learning_rate, drop=schedule.drop, epochs_drop=schedule.epochs_drop, first_epoch=first_epoch)
        return PhaseSchedule(learning_rate, (keras.callbacks.LearningRateScheduler(rate),))
    if name == "performance":
        plateau = keras.callbacks.ReduceLROnPlateau(
            monitor=schedule.monitor,
            factor=schedule.factor,
            patience=schedule.patience,
            min_lr=schedule.min_lr,
            min_delta=schedule.min_delta,
        )
        return PhaseSchedule(learning_rate, (plateau,))
    if name == "onecycle":
        if total_steps < 2:
            raise ValueError(
                f"schedule onecycle needs a phase of at least 2 steps to rise and fall. Received: "
                f"steps_per_epoch={steps_per_epoch}, epochs={epochs}"
            )
        cycle = OneCycle(
            learning_rate,
            total_steps,
            pct_start=schedule.pct_start,
            div_factor=schedule.div_factor,
            final_div_factor=schedule.final_div_factor,
            anneal=schedule.anneal,
            max_momentum=schedule.max_momentum,
            min_momentum=schedule.min_momentum,
        )
        if not schedule.cycle_momentum:
            return PhaseSchedule(cycle)
        if momentum_term is None:
            raise ValueError(
                "schedule onecycle cycles momentum, which needs the optimizer's momentum term. "
                "Received: momentum_term=None"
            )
        return PhaseSchedule(cycle, (MomentumCycler(cycle, attribute=momentum_term),))
    if name == "cosine":
        # A share of the phase rather than a number of epochs, so the same setting suits phases of any length.
        warmup_steps = min(round(schedule.warmup_fraction * total_steps), total_steps - 1)
        if not warmup_steps:
            return PhaseSchedule(schedules.CosineDecay(learning_rate, decay_steps=total_steps, alpha=schedule.alpha))
        return PhaseSchedule(
            schedules.CosineDecay(
                initial_learning_rate=learning_rate * schedule.warmup_start,
                decay_steps=total_steps - warmup_steps,
                alpha=schedule.alpha,
                warmup_target=learning_rate,
                warmup_steps=warmup_steps,
            )
        )
    raise ValueError(f"unknown schedule {name!r}. Received: schedule={schedule!r}")

"""Learning-rate schedules per training phase, on the phase's own step and epoch count.

Why per phase: fine-tuning runs one `fit` per phase with a fresh optimiser, so `optimizer.iterations`
(t below) starts at 0 in every phase, and each phase's schedule starts from that phase's learning
rate lr0 (fastai's `fine_tune` runs one 1cycle per phase the same way). Durations in the options are
in epochs of the phase and become steps through `steps_per_epoch`. Epochs stay on the pipeline's one
global axis: callbacks that see the global epoch subtract the phase's first epoch.

Keras' own schedules and callbacks are used where they exist: ExponentialDecay, PiecewiseConstantDecay,
CosineDecay (with its linear warm-up), LearningRateScheduler and ReduceLROnPlateau. Keras lacks a
power schedule with an exponent (InverseTimeDecay is c = 1 only) and 1cycle, which are written here
as serialisable `LearningRateSchedule`s, and a momentum cycle, written as a callback.

| name        | learning rate at step t (epoch e of the phase)                              |
|-------------|------------------------------------------------------------------------------|
| constant    | lr0                                                                          |
| power       | lr0 / (1 + t/s) ** c                   (s = decay_epochs, c = power)        |
| exponential | lr0 * 0.1 ** (t/s)                     (s = decay_epochs)                   |
| piecewise   | lr0 * factors[i] between boundaries (epochs)                                |
| step_drop   | lr0 * drop ** floor((1 + e) / epochs_drop)                                  |
| performance | lr0, times `factor` whenever `monitor` stalls for `patience` epochs          |
| onecycle    | lr0/div up to lr0 over pct_start of the phase, then down to lr0/div/final    |
| cosine      | linear warm-up from warmup_start*lr0 to lr0, then cosine decay to alpha*lr0  |
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras

SCHEDULE_OPTIONS: dict[str, dict[str, Any]] = {
    "constant": {},
    "power": {"decay_epochs": 1.0, "power": 1.0},
    "exponential": {"decay_epochs": 4.0},
    "piecewise": {"boundaries": None, "factors": None},
    "step_drop": {"drop": 0.5, "epochs_drop": 10},
    "performance": {"monitor": "val_loss", "factor": 0.5, "patience": 2, "min_lr": 0.0, "min_delta": 0.0},
    "onecycle": {
        "pct_start": 0.25,
        "div_factor": 25.0,
        "final_div_factor": 1e4,
        "anneal": "cos",
        "cycle_momentum": True,
        "max_momentum": 0.95,
        "min_momentum": 0.85,
    },
    "cosine": {"warmup_epochs": 1.0, "alpha": 0.0, "warmup_start": 0.0},
}
SCHEDULE_NAMES: tuple[str, ...] = tuple(SCHEDULE_OPTIONS)
ANNEAL_KINDS = ("cos", "linear")


def _interpolate(start: Any, end: Any, fraction: Any, *, anneal: str) -> Any:
    """From `start` (fraction 0) to `end` (fraction 1), along a half cosine or a straight line."""
    if anneal == "cos":
        fraction = (1.0 - keras.ops.cos(math.pi * fraction)) / 2.0
    return start + (end - start) * fraction


@keras.saving.register_keras_serializable(package="pipeline")
class PowerDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Power scheduling: `initial_learning_rate / (1 + step / decay_steps) ** power`.

    Why ours: Keras' InverseTimeDecay is this schedule with power 1 only.

    Args:
        initial_learning_rate: lr0.
        decay_steps: s, in steps: after s steps the LR is lr0 / 2 ** power.
        power: c.
    """

    def __init__(self, initial_learning_rate: float, decay_steps: float, power: float = 1.0) -> None:
        if decay_steps <= 0:
            raise ValueError(f"Argument `decay_steps` must be > 0. Received: decay_steps={decay_steps}")
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.power = power

    def __call__(self, step: Any) -> Any:
        step = keras.ops.cast(step, "float32")
        return self.initial_learning_rate / (1.0 + step / self.decay_steps) ** self.power

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "power": self.power,
        }


@keras.saving.register_keras_serializable(package="pipeline")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Leslie Smith's 1cycle: warm up to `max_learning_rate`, then anneal far below the start.

    Why ours: Keras has no 1cycle schedule.

    Args:
        max_learning_rate: The peak, lr0.
        total_steps: Steps of the whole cycle (the phase).
        pct_start: Share of the steps spent warming up.
        div_factor: The cycle starts at max / div_factor.
        final_div_factor: It ends at max / (div_factor * final_div_factor).
        anneal: "cos" or "linear" interpolation.
        max_momentum: Momentum at the start and the end (see `momentum_at`).
        min_momentum: Momentum at the LR's peak.
    """

    def __init__(
        self,
        max_learning_rate: float,
        total_steps: int,
        pct_start: float = 0.25,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        anneal: str = "cos",
        max_momentum: float = 0.95,
        min_momentum: float = 0.85,
    ) -> None:
        if total_steps < 2:
            raise ValueError(f"Argument `total_steps` must be >= 2. Received: total_steps={total_steps}")
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"Argument `pct_start` must be in (0, 1). Received: pct_start={pct_start}")
        if anneal not in ANNEAL_KINDS:
            raise ValueError(f"Argument `anneal` must be one of {', '.join(ANNEAL_KINDS)}. Received: anneal={anneal!r}")
        self.max_learning_rate = max_learning_rate
        self.total_steps = total_steps
        self.pct_start = pct_start
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        self.anneal = anneal
        self.max_momentum = max_momentum
        self.min_momentum = min_momentum

    def _cycle(self, step: Any, low_high_low: tuple[float, float, float]) -> Any:
        """Interpolates start -> middle over the warm-up and middle -> end after it."""
        start, middle, end = low_high_low
        step = keras.ops.cast(step, "float32")
        warmup_steps = self.pct_start * self.total_steps
        rising = _interpolate(start, middle, keras.ops.minimum(step / warmup_steps, 1.0), anneal=self.anneal)
        falling_fraction = keras.ops.clip((step - warmup_steps) / (self.total_steps - warmup_steps), 0.0, 1.0)
        falling = _interpolate(middle, end, falling_fraction, anneal=self.anneal)
        return keras.ops.where(step < warmup_steps, rising, falling)

    def __call__(self, step: Any) -> Any:
        start = self.max_learning_rate / self.div_factor
        return self._cycle(step, (start, self.max_learning_rate, start / self.final_div_factor))

    def momentum_at(self, step: int) -> float:
        """The momentum of step `step`: max -> min while the LR rises, min -> max while it falls."""
        return float(self._cycle(step, (self.max_momentum, self.min_momentum, self.max_momentum)))

    def get_config(self) -> dict[str, Any]:
        return {
            "max_learning_rate": self.max_learning_rate,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "anneal": self.anneal,
            "max_momentum": self.max_momentum,
            "min_momentum": self.min_momentum,
        }


class _TracedMomentum(keras.Variable):
    """A momentum the compiled train step reads at every step, so a callback can change it per batch.

    Why: Keras optimisers keep momentum (`momentum`, `beta_1`) as a Python float, which is baked into the
    train step when it is traced. A variable is read at run time instead. SGD and RMSprop also test
    `momentum != 0` / `momentum > 0` in Python while tracing and building; a variable would make that a
    symbolic tensor, so those comparisons answer from the (positive) momentum the cycle starts at.
    """

    def __init__(self, value: float, **keyword_arguments: Any) -> None:
        super().__init__(value, dtype="float32", trainable=False, **keyword_arguments)
        self._initial = float(value)

    def __ne__(self, other: object) -> bool:
        return self._initial != other

    def __eq__(self, other: object) -> bool:
        return self._initial == other

    def __gt__(self, other: object) -> bool:
        return self._initial > other

    def __hash__(self) -> int:
        return id(self)


def _momentum_attribute(optimizer: keras.optimizers.Optimizer) -> str:
    if hasattr(optimizer, "beta_1"):
        return "beta_1"
    if hasattr(optimizer, "momentum"):
        if not optimizer.momentum > 0:
            raise ValueError(
                f"{type(optimizer).__name__} has momentum {optimizer.momentum}: Keras builds no momentum slots "
                "then, so there is nothing to cycle; set its momentum > 0 (or cycle_momentum: false)"
            )
        return "momentum"
    raise ValueError(
        f"{type(optimizer).__name__} has no momentum term to cycle; set cycle_momentum: false or use an "
        "optimizer with momentum (sgd, rmsprop, adam, adamw, adamax, nadam)"
    )


class MomentumCycler(keras.callbacks.Callback):
    """Sets the optimiser's momentum term before every batch from a `OneCycle` schedule.

    The momentum term is `momentum` for SGD and RMSprop and `beta_1` for the Adam family; a loss-scale
    wrapper (mixed precision) is looked through.

    Args:
        schedule: The phase's 1cycle schedule, whose `momentum_at(step)` gives each step's momentum.
    """

    def __init__(self, schedule: OneCycle) -> None:
        super().__init__()
        self.schedule = schedule
        self._momentum: _TracedMomentum | None = None
        self._step = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        optimizer = self.model.optimizer
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        attribute = _momentum_attribute(optimizer)
        # fit builds the optimiser before this hook and traces the train step at the first batch after it.
        self._momentum = _TracedMomentum(self.schedule.momentum_at(0), name="cycled_momentum")
        setattr(optimizer, attribute, self._momentum)
        self._step = int(optimizer.iterations)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._momentum.assign(self.schedule.momentum_at(self._step))
        self._step += 1


@dataclass(frozen=True)
class PhaseSchedule:
    """What a phase's optimiser and `fit` get from its schedule.

    Attributes:
        learning_rate: The optimiser's learning rate: a number, or a Keras schedule of the step.
        callbacks: Callbacks that drive the LR or the momentum during `fit`.
    """

    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule
    callbacks: tuple[keras.callbacks.Callback, ...] = ()

    def learning_rate_used(self, optimizer: keras.optimizers.Optimizer) -> float:
        """The LR the optimiser's most recent step used (the schedule at `iterations - 1`)."""
        if isinstance(self.learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            step = max(int(optimizer.iterations) - 1, 0)
            return float(self.learning_rate(step))
        return learning_rate_used(optimizer)


def learning_rate_used(optimizer: keras.optimizers.Optimizer) -> float:
    """The current value of an optimiser's learning rate (a constant, or one a callback sets)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _options(name: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    if name not in SCHEDULE_OPTIONS:
        raise ValueError(f"unknown schedule {name!r}; registered schedules: {', '.join(SCHEDULE_NAMES)}")
    defaults = SCHEDULE_OPTIONS[name]
    for key in given or {}:
        if key not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise ValueError(f"schedule {name} does not take {key!r}; it takes: {allowed}")
    options = {**defaults, **(given or {})}
    missing = [key for key, value in options.items() if value is None]
    if missing:
        raise ValueError(f"schedule {name} needs {', '.join(missing)}")
    return options


def make_schedule(
    name: str,
    *,
    learning_rate: float,
    steps_per_epoch: int,
    epochs: int,
    first_epoch: int = 0,
    options: Mapping[str, Any] | None = None,
) -> PhaseSchedule:
    """Builds one phase's schedule.

    Args:
        name: A registered schedule (see `SCHEDULE_NAMES` and the module's table).
        learning_rate: The phase's learning rate, lr0.
        steps_per_epoch: Optimiser steps in one epoch of the phase.
        epochs: Epochs of the phase.
        first_epoch: The phase's first epoch on the global axis (`fit`'s `initial_epoch`).
        options: The schedule's options (see `SCHEDULE_OPTIONS`); missing ones take the defaults.

    Returns:
        The optimiser's learning rate and the callbacks to add to the phase's `fit`.

    Raises:
        ValueError: An unknown schedule, an option it does not take, or a value out of range.
    """
    settings = _options(name, options)
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"steps_per_epoch and epochs must be >= 1; received {steps_per_epoch} and {epochs}")
    total_steps = steps_per_epoch * epochs
    schedules = keras.optimizers.schedules
    if name == "constant":
        return PhaseSchedule(learning_rate)
    if name == "power":
        steps = settings["decay_epochs"] * steps_per_epoch
        return PhaseSchedule(PowerDecay(learning_rate, decay_steps=steps, power=settings["power"]))
    if name == "exponential":
        steps = settings["decay_epochs"] * steps_per_epoch
        return PhaseSchedule(schedules.ExponentialDecay(learning_rate, decay_steps=steps, decay_rate=0.1))
    if name == "piecewise":
        boundaries = [round(epoch * steps_per_epoch) for epoch in settings["boundaries"]]
        values = [learning_rate * factor for factor in settings["factors"]]
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"piecewise needs one more factor than boundaries; received {len(values)} and {len(boundaries)}"
            )
        return PhaseSchedule(schedules.PiecewiseConstantDecay(boundaries, values))
    if name == "step_drop":
        return PhaseSchedule(learning_rate, (_step_drop(learning_rate, settings, first_epoch=first_epoch),))
    if name == "performance":
        plateau = keras.callbacks.ReduceLROnPlateau(
            monitor=settings["monitor"],
            factor=settings["factor"],
            patience=settings["patience"],
            min_lr=settings["min_lr"],
            min_delta=settings["min_delta"],
        )
        return PhaseSchedule(learning_rate, (plateau,))
    if name == "onecycle":
        cycle_settings = {key: value for key, value in settings.items() if key != "cycle_momentum"}
        cycle = OneCycle(learning_rate, total_steps=max(total_steps, 2), **cycle_settings)
        return PhaseSchedule(cycle, (MomentumCycler(cycle),) if settings["cycle_momentum"] else ())
    warmup_steps = round(settings["warmup_epochs"] * steps_per_epoch)
    if warmup_steps >= total_steps:
        raise ValueError(
            f"cosine warmup_epochs is {settings['warmup_epochs']}, as long as the phase ({epochs} epochs); "
            "leave some epochs to decay"
        )
    if not warmup_steps:
        return PhaseSchedule(schedules.CosineDecay(learning_rate, decay_steps=total_steps, alpha=settings["alpha"]))
    return PhaseSchedule(
        schedules.CosineDecay(
            initial_learning_rate=learning_rate * settings["warmup_start"],
            decay_steps=total_steps - warmup_steps,
            alpha=settings["alpha"],
            warmup_target=learning_rate,
            warmup_steps=warmup_steps,
        )
    )


def _step_drop(learning_rate: float, settings: Mapping[str, Any], *, first_epoch: int) -> keras.callbacks.Callback:
    """Drop-based scheduling as Keras' epoch-based LearningRateScheduler.

    Why this callback rather than a step schedule: the formula is defined per epoch, and Keras'
    scheduler sets the LR at each epoch's start. `fit` hands it the global epoch (the pipeline passes
    `initial_epoch`), so the phase's first epoch is subtracted.
    """
    drop, epochs_drop = settings["drop"], settings["epochs_drop"]

    def rate(epoch: int, current: float) -> float:
        return learning_rate * drop ** math.floor((1 + epoch - first_epoch) / epochs_drop)

    return keras.callbacks.LearningRateScheduler(rate)

"""Learning-rate schedules per training phase: the registry of names and options, and the factory.

Why this module exists: fine-tuning runs one `fit` per phase with a fresh optimiser, so
`optimizer.iterations` (t below) restarts at 0 in every phase, and each phase's schedule starts from
that phase's learning rate lr0 (fastai's `fine_tune` runs one 1cycle per phase the same way). Durations
in the options are in epochs of the phase (fractions allowed) and become steps through
`steps_per_epoch`. Epochs stay on the pipeline's one global axis (`fit(initial_epoch=first_epoch)`):
callbacks that see the global epoch subtract the phase's first epoch.

Why two modules: params validation imports the names and option tables here before TensorFlow loads,
so this module's top level must not import Keras (a test checks it). The schedule and callback classes
that subclass Keras types live in `pipeline.schedule_classes`, which `make_schedule` imports lazily.

Keras' own schedules and callbacks are used where they exist: ExponentialDecay, PiecewiseConstantDecay,
CosineDecay (with its linear warm-up), LearningRateScheduler and ReduceLROnPlateau. Keras lacks a
power schedule with an exponent (InverseTimeDecay is c = 1 only), 1cycle, and a momentum cycle; those
are ours.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

# name -> the options it takes, with their defaults (None: required, no default).
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
    "cosine": {"warmup_fraction": 0.1, "alpha": 0.0, "warmup_start": 0.0},
}
SCHEDULE_NAMES: tuple[str, ...] = tuple(SCHEDULE_OPTIONS)
ANNEAL_KINDS: tuple[str, ...] = ("cos", "linear")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number_in(low: float, high: float, *, low_open: bool, high_open: bool) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not _is_number(value):
            return False
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    return check


def _positive_numbers(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) > 0 and all(_is_number(item) and item > 0 for item in value)


# option -> (its check, what it allows); an option name means the same thing in every schedule taking it.
_OPTION_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "decay_epochs": (_number_in(0.0, math.inf, low_open=True, high_open=True), "a number > 0"),
    "power": (_number_in(0.0, math.inf, low_open=True, high_open=True), "a number > 0"),
    "boundaries": (_positive_numbers, "a non-empty list of numbers > 0 (epochs of the phase)"),
    "factors": (_positive_numbers, "a non-empty list of numbers > 0 (multiples of the learning rate)"),
    "drop": (_number_in(0.0, 1.0, low_open=True, high_open=True), "a number in (0, 1)"),
    "epochs_drop": (lambda value: _is_integer(value) and value >= 1, "an integer >= 1"),
    "monitor": (lambda value: isinstance(value, str) and bool(value), "a metric name such as 'val_loss'"),
    "factor": (_number_in(0.0, 1.0, low_open=True, high_open=True), "a number in (0, 1)"),
    "patience": (lambda value: _is_integer(value) and value >= 0, "an integer >= 0"),
    "min_lr": (_number_in(0.0, math.inf, low_open=False, high_open=True), "a number >= 0"),
    "min_delta": (_number_in(0.0, math.inf, low_open=False, high_open=True), "a number >= 0"),
    "pct_start": (_number_in(0.0, 1.0, low_open=True, high_open=True), "a number in (0, 1)"),
    "div_factor": (_number_in(1.0, math.inf, low_open=False, high_open=True), "a number >= 1"),
    "final_div_factor": (_number_in(1.0, math.inf, low_open=False, high_open=True), "a number >= 1"),
    "anneal": (lambda value: value in ANNEAL_KINDS, f"one of {', '.join(ANNEAL_KINDS)}"),
    "cycle_momentum": (lambda value: isinstance(value, bool), "true or false"),
    "max_momentum": (_number_in(0.0, 1.0, low_open=False, high_open=True), "a number in [0, 1)"),
    "min_momentum": (_number_in(0.0, 1.0, low_open=False, high_open=True), "a number in [0, 1)"),
    "warmup_fraction": (_number_in(0.0, 1.0, low_open=False, high_open=True), "a number in [0, 1)"),
    "alpha": (_number_in(0.0, 1.0, low_open=False, high_open=False), "a number in [0, 1]"),
    "warmup_start": (_number_in(0.0, 1.0, low_open=False, high_open=True), "a number in [0, 1)"),
}


def check_options(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validates a schedule's name and options without Keras, and fills in the defaults.

    Why separate from `make_schedule`: params validation can refuse a bad schedule before TensorFlow
    loads. Checks that need the phase's length (piecewise boundaries inside the phase, a cosine
    warm-up shorter than the phase, 1cycle's two steps) are `make_schedule`'s.

    Args:
        name: A registered schedule name (see `SCHEDULE_NAMES`).
        options: Its options (see `SCHEDULE_OPTIONS`); missing ones take the defaults.

    Returns:
        Every option of the schedule, given or default.

    Raises:
        ValueError: An unknown name (the message lists the registered ones), an option the schedule does
            not take (the message lists the ones it takes), a required option missing, or a value out of
            range (the message quotes it).
    """
    if name not in SCHEDULE_OPTIONS:
        raise ValueError(f"unknown schedule {name!r}; registered schedules: {', '.join(SCHEDULE_NAMES)}")
    defaults = SCHEDULE_OPTIONS[name]
    given = dict(options or {})
    for key in given:
        if key not in defaults:
            allowed = ", ".join(defaults) or "no options"
            raise ValueError(f"schedule {name} does not take option {key!r}; it takes: {allowed}")
    settings = {**defaults, **given}
    missing = [key for key, value in settings.items() if value is None]
    if missing:
        raise ValueError(f"schedule {name} needs option(s) {', '.join(missing)}; received none for them")
    for key, value in settings.items():
        check, allowed = _OPTION_RULES[key]
        if not check(value):
            raise ValueError(f"schedule {name}: option `{key}` must be {allowed}. Received: {key}={value!r}")
    if name == "piecewise":
        boundaries, factors = list(settings["boundaries"]), list(settings["factors"])
        if any(later <= earlier for earlier, later in itertools.pairwise(boundaries)):
            raise ValueError(
                f"schedule piecewise: option `boundaries` must increase strictly. Received: boundaries={boundaries}"
            )
        if len(factors) != len(boundaries) + 1:
            raise ValueError(
                f"schedule piecewise: option `factors` needs one entry more than `boundaries` "
                f"({len(boundaries) + 1}). Received: factors={factors} with boundaries={boundaries}"
            )
    if name == "onecycle" and settings["min_momentum"] > settings["max_momentum"]:
        raise ValueError(
            "schedule onecycle: option `min_momentum` must not exceed `max_momentum`. "
            f"Received: min_momentum={settings['min_momentum']}, max_momentum={settings['max_momentum']}"
        )
    return settings


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
    import keras

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
    name: str,
    *,
    learning_rate: float,
    steps_per_epoch: int,
    epochs: int,
    first_epoch: int = 0,
    options: Mapping[str, Any] | None = None,
) -> PhaseSchedule:
    """Builds one phase's learning-rate schedule.

    Args:
        name: A registered schedule (see `SCHEDULE_NAMES` and the module's table).
        learning_rate: The phase's learning rate, lr0.
        steps_per_epoch: Optimiser steps in one epoch of the phase.
        epochs: Epochs in the phase.
        first_epoch: The phase's first epoch on the global axis (`fit`'s `initial_epoch`).
        options: The schedule's options (see `SCHEDULE_OPTIONS`); missing ones take the defaults.

    Returns:
        The optimiser's learning rate (a number or a Keras schedule) and the callbacks for the phase's
        `fit`. For `onecycle` with `cycle_momentum`, the optimiser must have a momentum term > 0
        (`momentum` of SGD or RMSprop, `beta_1` of the Adam family); `fit` raises otherwise.

    Raises:
        ValueError: An unknown schedule, an option it does not take, a value out of range, or a phase
            too short for the options (see `check_options`).
    """
    settings = check_options(name, options)
    _check_phase(learning_rate=learning_rate, steps_per_epoch=steps_per_epoch, epochs=epochs, first_epoch=first_epoch)
    learning_rate = float(learning_rate)
    total_steps = steps_per_epoch * epochs
    first_steps: list[int] = []
    if name == "piecewise":
        first_steps = _piecewise_first_steps(
            list(settings["boundaries"]), steps_per_epoch=steps_per_epoch, epochs=epochs
        )
    if name == "onecycle" and total_steps < 2:
        raise ValueError(
            f"schedule onecycle needs a phase of at least 2 steps to rise and fall. Received: "
            f"steps_per_epoch={steps_per_epoch}, epochs={epochs}"
        )
    # A share of the phase rather than a number of epochs, so the same setting suits phases of any length.
    warmup_steps = min(round(settings.get("warmup_fraction", 0.0) * total_steps), total_steps - 1)

    import keras

    from pipeline import schedule_classes

    schedules = keras.optimizers.schedules
    if name == "constant":
        return PhaseSchedule(learning_rate)
    if name == "power":
        decay_steps = settings["decay_epochs"] * steps_per_epoch
        return PhaseSchedule(schedule_classes.PowerDecay(learning_rate, decay_steps, power=settings["power"]))
    if name == "exponential":
        decay_steps = settings["decay_epochs"] * steps_per_epoch
        return PhaseSchedule(schedules.ExponentialDecay(learning_rate, decay_steps=decay_steps, decay_rate=0.1))
    if name == "piecewise":
        # PiecewiseConstantDecay switches after its boundary (values[i + 1] from step boundary + 1), so the
        # boundary passed is the last step of the previous factor.
        values = [learning_rate * factor for factor in settings["factors"]]
        return PhaseSchedule(schedules.PiecewiseConstantDecay([step - 1 for step in first_steps], values))
    if name == "step_drop":
        rate = _StepDrop(
            learning_rate, drop=settings["drop"], epochs_drop=settings["epochs_drop"], first_epoch=first_epoch
        )
        return PhaseSchedule(learning_rate, (keras.callbacks.LearningRateScheduler(rate),))
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
        cycle = schedule_classes.OneCycle(
            learning_rate,
            total_steps,
            pct_start=settings["pct_start"],
            div_factor=settings["div_factor"],
            final_div_factor=settings["final_div_factor"],
            anneal=settings["anneal"],
            max_momentum=settings["max_momentum"],
            min_momentum=settings["min_momentum"],
        )
        cyclers = (schedule_classes.MomentumCycler(cycle),) if settings["cycle_momentum"] else ()
        return PhaseSchedule(cycle, cyclers)
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

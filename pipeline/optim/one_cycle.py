"""1cycle: the learning-rate schedule and the callback that cycles the optimiser's momentum the other way.

Why ours: Keras has no 1cycle schedule and no callback that changes an optimiser's momentum during
`fit`. The two belong together (the momentum of step t is read off the same cycle as its LR), so they
share a module; `pipeline.optim.schedules.make_schedule` builds both for a `onecycle` phase.

The schedule is registered for Keras serialisation (package "pipeline"): a compiled model saved with
its optimiser names it, and loading it needs this module imported.
"""

from __future__ import annotations

import math
from typing import Any

import keras

ANNEAL_KINDS: tuple[str, ...] = ("cos", "linear")


@keras.saving.register_keras_serializable(package="pipeline")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Leslie Smith's 1cycle: warm up to the peak, then anneal far below the start.

    With T = `total_steps` and w = `pct_start` * (T - 1): step 0 uses max / div_factor, step w the
    peak `max_learning_rate`, and step T - 1 (the phase's last) max / (div_factor * final_div_factor);
    between them the LR follows a half cosine (or a straight line). Steps past T - 1 keep the last
    value. The momentum cycle runs the other way (see `momentum_at`).

    Why ours: Keras has no 1cycle schedule.

    Args:
        max_learning_rate: The peak, lr0.
        total_steps: Steps of the whole cycle (the phase), >= 2.
        pct_start: Share of the cycle spent warming up, in (0, 1).
        div_factor: The cycle starts at max_learning_rate / div_factor.
        final_div_factor: It ends at max_learning_rate / (div_factor * final_div_factor).
        anneal: "cos" or "linear" interpolation, for the LR and the momentum.
        max_momentum: Momentum at the start and the end.
        min_momentum: Momentum at the LR's peak.

    Raises:
        ValueError: An argument out of range (the message quotes it).
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
        super().__init__()
        if not max_learning_rate > 0:
            raise ValueError(
                f"Argument `max_learning_rate` must be > 0. Received: max_learning_rate={max_learning_rate}"
            )
        if not total_steps >= 2:
            raise ValueError(f"Argument `total_steps` must be >= 2. Received: total_steps={total_steps}")
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"Argument `pct_start` must be in (0, 1). Received: pct_start={pct_start}")
        if not (div_factor >= 1.0 and final_div_factor >= 1.0):
            raise ValueError(
                "Arguments `div_factor` and `final_div_factor` must be >= 1. "
                f"Received: div_factor={div_factor}, final_div_factor={final_div_factor}"
            )
        if anneal not in ANNEAL_KINDS:
            raise ValueError(f"Argument `anneal` must be one of {', '.join(ANNEAL_KINDS)}. Received: anneal={anneal!r}")
        if not 0.0 <= min_momentum <= max_momentum < 1.0:
            raise ValueError(
                "Arguments `min_momentum` and `max_momentum` must satisfy 0 <= min_momentum <= max_momentum < 1. "
                f"Received: min_momentum={min_momentum}, max_momentum={max_momentum}"
            )
        self.max_learning_rate = max_learning_rate
        self.total_steps = total_steps
        self.pct_start = pct_start
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        self.anneal = anneal
        self.max_momentum = max_momentum
        self.min_momentum = min_momentum

    @property
    def peak_step(self) -> float:
        """w, the (possibly fractional) step at which the LR peaks and the momentum bottoms out."""
        return self.pct_start * (self.total_steps - 1)

    def __call__(self, step: Any) -> Any:
        ops = keras.ops
        step = ops.cast(step, "float32")
        start = self.max_learning_rate / self.div_factor
        end = start / self.final_div_factor
        rising = step <= self.peak_step
        # The LR is written as floor + (peak - floor) * height, height 0 at both ends and 1 at the peak,
        # so the tiny final LR is not the float32 difference of two large numbers.
        floor = ops.where(rising, start, end)
        return floor + (self.max_learning_rate - floor) * self._height(step, ops)

    def momentum_at(self, step: int) -> float:
        """The momentum of step `step`: max -> min while the LR rises, min -> max while it falls.

        Why plain Python: `MomentumCycler` asks for it before every batch, and a Python float costs
        nothing where a backend op would cost a dispatch.
        """
        return self.max_momentum - (self.max_momentum - self.min_momentum) * float(self._height(float(step), math))

    def _height(self, step: Any, ops: Any) -> Any:
        """0 at step 0 and from the last step on, 1 at the peak; a half cosine or a straight line each way.

        `ops` is `keras.ops` for the schedule (a tensor step) or `math` for the momentum (a float).
        """
        last_step = self.total_steps - 1
        peak_step = self.peak_step
        if ops is math:
            fraction = step / peak_step if step <= peak_step else (last_step - step) / (last_step - peak_step)
            fraction = min(max(fraction, 0.0), 1.0)
        else:
            fraction = ops.where(step <= peak_step, step / peak_step, (last_step - step) / (last_step - peak_step))
            fraction = ops.clip(fraction, 0.0, 1.0)
        if self.anneal == "linear":
            return fraction
        # (1 - cos(pi f)) / 2 written as sin(pi f / 2) ** 2: exact near f = 0, where the LR ends.
        return ops.sin(math.pi / 2 * fraction) ** 2

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


class _CycledMomentum(keras.Variable):
    """A momentum term the compiled train step reads at every step, so a callback can change it per batch.

    Why: Keras optimisers keep `momentum` / `beta_1` as a Python float that is baked into the train
    step when `fit` traces it; a variable is read when the step runs. SGD and RMSprop also ask
    `momentum != 0` / `momentum > 0` in Python while tracing, which on a variable would give a symbolic
    tensor: comparisons here answer from the momentum the variable was made with (> 0, the cycle's
    start), a question of whether the momentum slots are in use, not of the current value.
    """

    def __init__(self, value: float, *, name: str) -> None:
        super().__init__(value, dtype="float32", trainable=False, name=name)
        self._compared_value = float(value)

    def __eq__(self, other: object) -> bool:
        return self._compared_value == other

    def __ne__(self, other: object) -> bool:
        return self._compared_value != other

    def __gt__(self, other: object) -> bool:
        return self._compared_value > other

    def __ge__(self, other: object) -> bool:
        return self._compared_value >= other

    def __lt__(self, other: object) -> bool:
        return self._compared_value < other

    def __le__(self, other: object) -> bool:
        return self._compared_value <= other

    def __hash__(self) -> int:
        return id(self)


def _check_momentum_term(optimizer: keras.optimizers.Optimizer, attribute: str) -> None:
    """Raises unless `optimizer` has a momentum term `attribute` that Keras steps with.

    Raises:
        ValueError: The optimiser has no such attribute, or its `momentum` is 0, in which case Keras
            builds no momentum slots and there is nothing to cycle.
    """
    kind = type(optimizer).__name__
    if not hasattr(optimizer, attribute):
        raise ValueError(
            f"Cannot cycle the momentum of {kind}: it has no momentum term `{attribute}`; choose an optimizer "
            f"with one, or cycle_momentum: false. Received: attribute={attribute!r}"
        )
    value = getattr(optimizer, attribute)
    if attribute == "momentum" and not value > 0:
        raise ValueError(
            f"Cannot cycle the momentum of {kind}: its `momentum` is {float(value)}, and with momentum 0 "
            "Keras builds no momentum slots. Set the optimizer's momentum > 0 (e.g. max_momentum), or "
            "cycle_momentum: false."
        )


class MomentumCycler(keras.callbacks.Callback):
    """Sets the optimiser's momentum term before every batch from a `OneCycle` schedule.

    The term is the optimiser's attribute `attribute` (`momentum` for SGD and RMSprop, `beta_1` for the
    Adam family: `pipeline.params.optimizer` declares it per optimiser); a `LossScaleOptimizer` (mixed
    precision) is looked through. During `fit` the attribute is a variable
    the compiled step reads (see `_CycledMomentum`); at the end of `fit` it is a float again, the last
    momentum used, so the optimiser's config and a saved model hold a plain number.

    Why ours: Keras has no callback for momentum, and its optimisers bake the momentum into the traced
    step. `fit` builds the optimiser before `on_train_begin` and traces the step at the first batch
    after it, so `on_train_begin` is where the variable goes in.

    Args:
        schedule: The phase's 1cycle schedule; step t's momentum is `schedule.momentum_at(t)`, t being
            the optimiser's `iterations`, the same step the LR schedule sees.
        attribute: The optimiser's attribute holding its momentum term.
    """

    def __init__(self, schedule: OneCycle, *, attribute: str) -> None:
        super().__init__()
        self.schedule = schedule
        self.attribute = attribute
        # One variable for the callback's life: a second `fit` of the same compiled model reuses the step
        # traced with it.
        self._momentum: _CycledMomentum | None = None
        self._optimizer: keras.optimizers.Optimizer | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        _check_momentum_term(optimizer, self.attribute)
        self._optimizer = optimizer
        if self._momentum is None:
            self._momentum = _CycledMomentum(self.schedule.max_momentum, name="cycled_momentum")
        self._momentum.assign(self.schedule.momentum_at(self._iterations()))
        # object.__setattr__ skips the optimiser's variable tracking: tracked, the variable would join
        # `optimizer.variables` and a saved optimiser would hold one variable more than a fresh one.
        object.__setattr__(optimizer, self.attribute, self._momentum)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._momentum.assign(self.schedule.momentum_at(self._iterations()))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        setattr(self._optimizer, self.attribute, float(keras.ops.convert_to_numpy(self._momentum)))

    def _iterations(self) -> int:
        return int(keras.ops.convert_to_numpy(self._optimizer.iterations))

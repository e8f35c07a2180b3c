"""Learning-rate schedule settings, one model per schedule (see `pipeline.optim.schedules` for the formulas).

Each option is checked here, once; `make_schedule` reads the validated model.

Durations are in epochs of the phase the schedule runs in (fractions allowed); the schedule starts
from the phase's learning rate, lr0.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, model_validator

from pipeline.params.common import Fraction, NamedChoice, NamedOptions, NonNegativeFloat, PositiveFloat, PositiveInt

Momentum = Annotated[float, Field(ge=0.0, lt=1.0)]


class ConstantParams(NamedOptions):
    """lr0 for the whole phase."""

    name: Literal["constant"]


class PowerParams(NamedOptions):
    """Power scheduling: lr0 / (1 + t/s) ** c."""

    name: Literal["power"]
    decay_epochs: PositiveFloat = Field(default=1.0, description="s, in epochs.")
    power: PositiveFloat = Field(default=1.0, description="c.")


class ExponentialParams(NamedOptions):
    """Exponential scheduling: lr0 * 0.1 ** (t/s), a tenfold drop every s epochs."""

    name: Literal["exponential"]
    decay_epochs: PositiveFloat = Field(default=4.0, description="s, in epochs.")


class PiecewiseParams(NamedOptions):
    """Piecewise constant: lr0 * factors[i] between boundaries (epochs of the phase)."""

    name: Literal["piecewise"]
    boundaries: list[PositiveFloat] = Field(min_length=1)
    factors: list[PositiveFloat] = Field(min_length=2)

    @model_validator(mode="after")
    def _shape(self) -> PiecewiseParams:
        if any(later <= earlier for earlier, later in zip(self.boundaries, self.boundaries[1:], strict=False)):
            raise ValueError(f"boundaries must increase strictly; received {self.boundaries}")
        if len(self.factors) != len(self.boundaries) + 1:
            raise ValueError(
                f"factors needs one more entry than boundaries ({len(self.boundaries) + 1}); "
                f"received {len(self.factors)}"
            )
        return self


class StepDropParams(NamedOptions):
    """Drop-based: lr0 * drop ** floor((1 + epoch) / epochs_drop)."""

    name: Literal["step_drop"]
    drop: Fraction = 0.5
    epochs_drop: PositiveInt = 10


class PerformanceParams(NamedOptions):
    """Performance scheduling: multiply the LR by `factor` when `monitor` stops improving (ReduceLROnPlateau)."""

    name: Literal["performance"]
    monitor: Literal["val_loss", "val_accuracy", "loss", "accuracy"] = "val_loss"
    factor: Fraction = 0.5
    patience: Annotated[int, Field(ge=0)] = 2
    min_lr: NonNegativeFloat = 0.0
    min_delta: NonNegativeFloat = 0.0


class OneCycleParams(NamedOptions):
    """1cycle: warm up to lr0, then anneal far below it, with momentum cycled the other way."""

    name: Literal["onecycle"]
    pct_start: Fraction = Field(default=0.25, description="Share of the phase's steps spent warming up.")
    div_factor: Annotated[float, Field(ge=1.0)] = Field(default=25.0, description="Start at lr0 / div_factor.")
    final_div_factor: Annotated[float, Field(ge=1.0)] = Field(
        default=1e4, description="End at lr0 / (div_factor * final_div_factor)."
    )
    anneal: Literal["cos", "linear"] = "cos"
    cycle_momentum: StrictBool = True
    max_momentum: Momentum = 0.95
    min_momentum: Momentum = 0.85

    @model_validator(mode="after")
    def _momentum_range(self) -> OneCycleParams:
        if self.min_momentum > self.max_momentum:
            raise ValueError(f"min_momentum ({self.min_momentum}) must not exceed max_momentum ({self.max_momentum})")
        return self


class CosineParams(NamedOptions):
    """Cosine decay to alpha * lr0 after a linear warm-up from warmup_start * lr0."""

    name: Literal["cosine"]
    warmup_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.1, description="Share of the phase's steps spent warming up."
    )
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    warmup_start: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


SCHEDULE_MODELS: tuple[type[NamedOptions], ...] = (
    ConstantParams,
    PowerParams,
    ExponentialParams,
    PiecewiseParams,
    StepDropParams,
    PerformanceParams,
    OneCycleParams,
    CosineParams,
)
ScheduleChoice = NamedChoice(SCHEDULE_MODELS, "schedule")
ScheduleParams = NamedOptions

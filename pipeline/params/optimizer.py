"""Optimiser settings: a name, or a mapping of the name and that optimiser's own hyper-parameters.

Why one model per optimiser: a key the chosen optimiser does not take (`momentum` for Adam) must be an
error naming the keys it does take, not an option silently dropped. Defaults are Keras' own, so an
omitted key means what it means in Keras, and the run's parameters show the value in use.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from pipeline.params.common import NamedChoice, NamedOptions, PositiveFloat

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
Epsilon = Annotated[float, Field(gt=0.0, le=1.0)]
CLIPPING_KEYS = ("clipvalue", "clipnorm", "global_clipnorm")


class _Optimizer(NamedOptions):
    """Gradient clipping, which every optimiser takes: at most one of the three.

    `momentum_term` names the option holding the optimiser's momentum (what 1cycle cycles), None when it
    has none: the one place the pipeline knows it.
    """

    momentum_term: ClassVar[str | None] = None

    clipvalue: PositiveFloat | None = Field(default=None, description="Clip each gradient element to +-value.")
    clipnorm: PositiveFloat | None = Field(default=None, description="Clip each variable's gradient to this norm.")
    global_clipnorm: PositiveFloat | None = Field(
        default=None, description="Clip all gradients together to this joint norm."
    )

    @model_validator(mode="after")
    def _one_clipping_at_most(self) -> _Optimizer:
        chosen = [key for key in CLIPPING_KEYS if getattr(self, key) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose at most one of {', '.join(CLIPPING_KEYS)}; received {', '.join(chosen)}")
        return self

    def options(self) -> dict[str, Any]:
        """The optimiser's keyword arguments, clipping included only where set."""
        return {key: value for key, value in super().options().items() if value is not None}


class SGDParams(_Optimizer):
    """Stochastic gradient descent, with momentum and Nesterov's variant when asked."""

    momentum_term: ClassVar[str | None] = "momentum"
    name: Literal["sgd"]
    momentum: Beta = 0.0
    nesterov: bool = False


class AdagradParams(_Optimizer):
    """AdaGrad: per-parameter steps shrinking with the sum of squared gradients."""

    name: Literal["adagrad"]
    initial_accumulator_value: Annotated[float, Field(ge=0.0)] = 0.1
    epsilon: Epsilon = 1e-7


class AdadeltaParams(_Optimizer):
    """Adadelta: AdaGrad with a decaying average instead of a growing sum."""

    name: Literal["adadelta"]
    rho: Beta = 0.95
    epsilon: Epsilon = 1e-7


class RMSpropParams(_Optimizer):
    """RMSprop: steps scaled by a decaying average of squared gradients (rho), optional momentum."""

    momentum_term: ClassVar[str | None] = "momentum"
    name: Literal["rmsprop"]
    rho: Beta = 0.9
    momentum: Beta = 0.0
    epsilon: Epsilon = 1e-7
    centered: bool = False


class _AdamFamily(_Optimizer):
    """What Adam and its kin share: decay rates of the first (momentum) and second moments, and epsilon."""

    momentum_term: ClassVar[str | None] = "beta_1"

    beta_1: Beta = 0.9
    beta_2: Beta = 0.999
    epsilon: Epsilon = 1e-7


class AdamParams(_AdamFamily):
    """Adam: momentum (beta_1) and RMSprop scaling (beta_2) with bias correction."""

    name: Literal["adam"]
    amsgrad: bool = False


class AdamWParams(_AdamFamily):
    """AdamW: Adam with decoupled weight decay."""

    name: Literal["adamw"]
    amsgrad: bool = False
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.004


class AdamaxParams(_AdamFamily):
    """Adamax: Adam with the infinity norm."""

    name: Literal["adamax"]


class NadamParams(_AdamFamily):
    """Nadam: Adam with Nesterov momentum."""

    name: Literal["nadam"]


OPTIMIZER_MODELS: tuple[type[_Optimizer], ...] = (
    SGDParams,
    AdagradParams,
    AdadeltaParams,
    RMSpropParams,
    AdamParams,
    AdamWParams,
    AdamaxParams,
    NadamParams,
)
OptimizerChoice = NamedChoice(OPTIMIZER_MODELS, "optimizer")
OptimizerParams = _Optimizer
# The optimisers 1cycle can cycle the momentum of, for messages.
OPTIMIZERS_WITH_MOMENTUM: tuple[str, ...] = tuple(
    model.model_fields["name"].annotation.__args__[0] for model in OPTIMIZER_MODELS if model.momentum_term
)

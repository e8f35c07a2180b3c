"""The `head` section: the new classifier put on the backbone, with the course's techniques as switches."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.model.activations import ACTIVATION_NAMES, INITIALIZER_NAMES, combination_problems
from pipeline.params.common import PositiveFloat, PositiveInt, Rate, Registered, Section


class KernelRegularizerParams(Section):
    """L1 and L2 penalties on every Dense kernel of the head (both 0: none; both set: L1L2)."""

    l1: Annotated[float, Field(ge=0.0)] = 0.0
    l2: Annotated[float, Field(ge=0.0)] = 0.0


class MaxNormParams(Section):
    """Max-norm constraint on every Dense kernel of the head: each unit's incoming weights have norm <= value."""

    value: PositiveFloat = 3.0
    axis: Literal[0, 1] = Field(default=0, description="0: per output unit (the usual), 1: per input feature")


class HeadParams(Section):
    """The new classification head that replaces the ImageNet one."""

    pooling: Literal["avg", "max"] = "avg"
    dropout: Rate = Field(default=0.2, description="Dropout on the head's input, the pooled features.")
    hidden_units: list[PositiveInt] = Field(default_factory=list, description="One hidden Dense layer per entry.")
    activation: Registered(ACTIVATION_NAMES, "activation") = "relu"
    negative_slope: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        default=0.3, description="Slope of leaky_relu for negative inputs."
    )
    maxout_pieces: Annotated[int, Field(ge=2, le=16)] = Field(
        default=2, description="Linear pieces whose maximum a maxout unit takes."
    )
    initializer: Registered(("auto", *INITIALIZER_NAMES), "initializer") = Field(
        default="auto", description="auto: He for the ReLU family, LeCun for selu, Glorot otherwise."
    )
    batch_norm: Literal["none", "before", "after"] = Field(
        default="none", description="BatchNormalization of each hidden layer, before or after its activation."
    )
    hidden_dropout: Rate | list[Rate] = Field(
        default=0.0, description="Dropout after each hidden layer: one rate for all, or one per layer."
    )
    dropout_type: Literal["auto", "standard", "alpha"] = Field(
        default="auto", description="auto: AlphaDropout when the activation is selu, Dropout otherwise."
    )
    kernel_regularizer: KernelRegularizerParams = Field(default_factory=KernelRegularizerParams)
    max_norm: MaxNormParams | None = None

    @model_validator(mode="after")
    def _coherent(self) -> HeadParams:
        if isinstance(self.hidden_dropout, list) and len(self.hidden_dropout) != len(self.hidden_units):
            raise ValueError(
                f"hidden_dropout lists {len(self.hidden_dropout)} rates for {len(self.hidden_units)} hidden "
                "layers (hidden_units); give one rate per layer, or a single number for all"
            )
        problems = combination_problems(
            activation=self.activation,
            batch_norm=self.batch_norm,
            dropout_type=self.dropout_type,
            dropout_rates=[self.dropout, *self.hidden_dropout_rates()],
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def hidden_dropout_rates(self) -> list[float]:
        """The dropout rate after each hidden layer."""
        if isinstance(self.hidden_dropout, list):
            return list(self.hidden_dropout)
        return [self.hidden_dropout] * len(self.hidden_units)

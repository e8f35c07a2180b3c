"""The `diagnostics` section: what the course teaches to watch while training, each part a switch.

Why a section: the gradient norms, the dead-ReLU probe and the reading of the curves each cost a little
and each has thresholds a user may want to move; they are checked here once, like every other setting.
The meaning of each flag and its remedy: docs/diagnostics.md.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool

from pipeline.params.common import Fraction, PositiveFloat, Section


class DiagnosticsParams(Section):
    """Gradient norms per block, dead ReLUs of the head, and the diagnosis of the history."""

    gradient_norms: StrictBool = Field(
        default=True,
        description="Per-block gradient norms every epoch (grad_norm/<block>), with the vanishing and exploding flags.",
    )
    dead_relus: StrictBool = Field(
        default=True, description="Fraction of the head's ReLU units that output 0 on every probe image, each epoch."
    )
    diagnosis: StrictBool = Field(
        default=True, description="Read the curves at the end of train: converging, overfitting, ... (diagnosis.json)."
    )
    vanishing_ratio: Fraction = Field(
        default=1e-5, description="Flag vanishing gradients when lowest / highest block norm falls below this."
    )
    exploding_norm: PositiveFloat = Field(
        default=1e3, description="Flag exploding gradients: a block's norm on a step above this, or not finite."
    )
    dead_relu_fraction: Fraction = Field(
        default=0.5, description="Flag dead ReLUs when more than this fraction of the head's ReLU units are dead."
    )
    probe_images: Annotated[int, Field(ge=8, le=4096)] = Field(
        default=256, description="Validation images (or their cached features) the dead-ReLU probe runs on."
    )
    window: Annotated[int, Field(ge=1, le=50)] = Field(
        default=3, description="Epochs at the end of the history the diagnosis reads the trend over."
    )
    tolerance: Fraction = Field(
        default=0.01, description="Relative change of the validation loss below which a curve counts as flat."
    )
    underfit_loss: Fraction = Field(
        default=0.5,
        description="Underfitting: both losses above this fraction of the loss of guessing, ln(classes).",
    )

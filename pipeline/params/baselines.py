"""The classical baselines the evaluate stage scores beside the model (`evaluate.baselines`), and their names.

Why: a fine-tuned network is worth its cost only when it beats what a one-line scikit-learn classifier
does on the same split. Two such classifiers are scored on the test split next to the majority class: a
logistic regression on the frozen pretrained backbone's pooled features (the linear probe) and one on
downsampled raw pixels. Each fits on a capped, stratified training subsample, so its cost stays a small,
known share of the train stage (measured by bench/baselines_cost.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool

from pipeline.params.common import Section

# The baselines the champion gate can take as its floor (`tracking.gate_baselines`), in the order shown.
# `majority` (always the split's most frequent class) costs nothing and cannot be turned off.
BASELINE_NAMES = ("majority", "probe", "pixels")

MaxIterations = Annotated[int, Field(ge=10, le=10_000)]
TrainingImages = Annotated[int, Field(ge=10, le=1_000_000)]


class ProbeParams(Section):
    """The linear probe: logistic regression on the frozen pretrained backbone's pooled features."""

    enabled: StrictBool = True
    max_train_images: TrainingImages = Field(
        default=2000,
        description=(
            "Training images (a stratified, seeded subsample) the probe fits on; each costs one forward pass "
            "of the frozen backbone, as does each test image."
        ),
    )
    max_iter: MaxIterations = Field(default=300, description="lbfgs iterations of the logistic regression.")


class PixelsParams(Section):
    """The pixel baseline: logistic regression on raw pixels, downsampled and scaled to [0, 1]."""

    enabled: StrictBool = True
    max_train_images: TrainingImages = Field(
        default=10_000, description="Training images (a stratified, seeded subsample) the baseline fits on."
    )
    side: Annotated[int, Field(ge=2, le=64)] = Field(
        default=16, description="The images are resized (area average) to side x side pixels."
    )
    color: Literal["grey", "stored"] = Field(
        default="grey", description="grey: the mean of the channels; stored: every stored channel (rgb: 3x wider)."
    )
    max_iter: MaxIterations = Field(default=300, description="lbfgs iterations of the logistic regression.")


class BaselinesParams(Section):
    """Both classical baselines of the evaluate stage."""

    probe: ProbeParams = Field(default_factory=ProbeParams)
    pixels: PixelsParams = Field(default_factory=PixelsParams)

    def disabled(self) -> tuple[str, ...]:
        """The names (of `BASELINE_NAMES`) of the baselines turned off."""
        return tuple(name for name in ("probe", "pixels") if not getattr(self, name).enabled)

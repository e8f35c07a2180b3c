"""The `train` section: the fine-tuning recipe, from the frozen phase through each unfreezing stage."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, model_validator

from pipeline.params.common import NonNegativeFloat, NumberOr, PositiveInt, Rate, Section
from pipeline.params.optimizer import AdamParams, OptimizerChoice
from pipeline.params.schedule import ConstantParams, ScheduleChoice

BatchNormPolicy = Literal["frozen", "affine", "trainable"]
BlockDecay = Annotated[float, Field(ge=1.0, le=100.0)]


class EarlyStoppingParams(Section):
    """Stop a phase when `monitor` stops improving, and go on from its best epoch's weights."""

    monitor: Literal["val_loss", "val_accuracy", "loss", "accuracy"] = "val_loss"
    patience: Annotated[int, Field(ge=0)] = 2
    min_delta: NonNegativeFloat = 0.0
    restore_best: bool = True


class AugmentationParams(Section):
    """Random image changes while training only (Keras preprocessing layers).

    A flip alone keeps the frozen-feature cache (both orientations are cached and each epoch draws one per
    image); anything else disables it, since the backbone then sees different pixels every epoch."""

    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "none"
    rotation: Annotated[float, Field(ge=0.0, le=0.5)] = Field(default=0.0, description="Fraction of a full turn.")
    zoom: Rate = Field(default=0.0, description="Up to this fraction in or out.")
    translation: Rate = Field(default=0.0, description="Up to this fraction of the size, each direction.")
    contrast: Rate = Field(default=0.0, description="Contrast factor drawn from [1 - c, 1 + c].")

    @property
    def active(self) -> bool:
        """Whether any augmentation is on."""
        return self.flip != "none" or any((self.rotation, self.zoom, self.translation, self.contrast))


class PhaseLengthParams(Section):
    """How long a phase with `epochs: auto` trains, in optimiser steps, so that the length follows the data.

    Why: a recipe tuned on 56,000 training images (875 steps an epoch at batch 64) stops 800 images after
    about 90 steps if it counts epochs. In steps, both train as long as the recipe needs: at least
    `min_steps`, then on while the validation loss improves (early stopping), at most `max_steps` and
    `max_epochs`.
    """

    min_steps: PositiveInt = Field(default=600, description="At least this many optimiser steps.")
    max_steps: PositiveInt = Field(default=3500, description="At most this many (rounded down to whole epochs).")
    max_epochs: PositiveInt = Field(default=100, description="And at most this many epochs.")

    @model_validator(mode="after")
    def _range(self) -> PhaseLengthParams:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must not exceed max_steps ({self.max_steps})")
        return self


class UnfreezeDepthParams(Section):
    """What `blocks: auto` unfreezes: more blocks when the training split is small.

    Why: on 800 to 4,000 training images (Fashion-MNIST, MNIST, coloured drawings), unfreezing the top 4
    blocks instead of 2 gained 1.4 to 4 points of test accuracy (docs/performance.md). Such a split trains
    each auto phase for about `min_steps`, so the deeper blocks cost minutes; on 56,000 images the phases
    run up to `max_steps`, and 4 blocks (about 3x the time per step) would not fit the 10-minute budget.
    """

    small_data_images: PositiveInt = Field(
        default=10000, description="A training split of at most this many images is small."
    )
    small_data_blocks: PositiveInt = Field(default=4, description="Blocks `auto` unfreezes on a small split.")
    blocks: PositiveInt = Field(default=2, description="Blocks `auto` unfreezes on a larger one.")


class UnfreezeStageParams(Section):
    """One step of progressive unfreezing: the top `blocks` blocks (or `all`) train at `lr_factor` x base LR.

    Optimiser, schedule, BatchNorm policy, discriminative LR, early stopping and, for `epochs: auto`, the
    step bounds (`min_steps`, `max_steps`, `max_epochs`) default to the section's.
    """

    blocks: NumberOr(("all", "auto"), PositiveInt)
    epochs: NumberOr("auto", PositiveInt) = "auto"
    lr_factor: Annotated[float, Field(gt=0.0, le=1.0)]
    min_steps: PositiveInt | None = None
    max_steps: PositiveInt | None = None
    max_epochs: PositiveInt | None = None
    optimizer: OptimizerChoice | None = None
    schedule: ScheduleChoice | None = None
    bn_policy: BatchNormPolicy | None = None
    lr_decay_per_block: BlockDecay | None = None
    early_stopping: NumberOr("auto", EarlyStoppingParams) | None = None

    @model_validator(mode="after")
    def _step_bounds_only_with_auto(self) -> UnfreezeStageParams:
        if self.epochs != "auto":
            for key in ("min_steps", "max_steps", "max_epochs"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"{key} bounds an `epochs: auto` stage, but this stage trains a fixed {self.epochs} epochs; "
                        f"remove {key} or set epochs: auto"
                    )
        return self


class ActivationStoreParams(Section):
    """Where the frozen activations are kept on disk between runs (`pipeline.training.activation_store`)."""

    path: Annotated[str, Field(min_length=1)] = Field(
        default=".cache/activations", description="The store's folder; `make clean` empties .cache."
    )
    limit_mb: Annotated[int, Field(ge=0)] = Field(
        default=8192, description="Largest total size; past it the least recently used entries go. 0: no store."
    )


class TrainParams(Section):
    """The fine-tuning recipe: frozen phase, then the unfreezing stages in order."""

    seed: int = 42
    deterministic: NumberOr("auto", StrictBool) = Field(
        default="auto",
        description="TensorFlow's deterministic ops: auto (on for the CPU, off for GPUs, whose deterministic "
        "kernels are slower, missing for some ops, and exclude XLA), true or false.",
    )
    batch_size: PositiveInt = 64
    optimizer: OptimizerChoice = Field(default_factory=lambda: AdamParams(name="adam"))
    base_learning_rate: NumberOr("auto", Annotated[float, Field(gt=0.0, le=10.0)]) = Field(
        default=1e-3, description="LR of the frozen phase; auto takes the lr_find stage's suggestion."
    )
    schedule: ScheduleChoice = Field(
        default_factory=lambda: ConstantParams(name="constant"), description="Every phase's, unless a stage's own."
    )
    frozen_epochs: NumberOr("auto", PositiveInt) = Field(
        default="auto", description="Phase 1's epochs; auto: as long as `phase_length` says for this data."
    )
    phase_length: PhaseLengthParams = Field(default_factory=PhaseLengthParams)
    unfreeze_depth: UnfreezeDepthParams = Field(default_factory=UnfreezeDepthParams)
    bn_policy: BatchNormPolicy = Field(
        default="frozen",
        description="BatchNorm of unfrozen blocks: frozen (inference mode), affine (gamma and beta train, "
        "statistics frozen), trainable (everything trains).",
    )
    lr_decay_per_block: BlockDecay = Field(
        default=1.0, description="Discriminative LR: each lower unfrozen block trains at the LR above / this."
    )
    early_stopping: NumberOr("auto", EarlyStoppingParams) | None = Field(
        default="auto",
        description="auto: the `epochs: auto` phases stop on val_loss with patience 3 and restore their best "
        "epoch, fixed-length phases run every epoch; settings: every phase; null: none.",
    )
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    augmentation: AugmentationParams = Field(default_factory=AugmentationParams)
    unfreeze: list[UnfreezeStageParams] = Field(default_factory=list)
    feature_cache_mb: Annotated[int, Field(ge=0)] = Field(
        default=2048,
        description="Largest frozen activations a run caches (in memory, or memory-mapped from the activation "
        "store, where they must still fit the page cache to be read fast every epoch); 0: never cache.",
    )
    activation_store: ActivationStoreParams = Field(default_factory=ActivationStoreParams)
    resume: bool = Field(
        default=True,
        description="Checkpoint after every epoch and, when a killed train starts again with the same params, "
        "data and code, go on from its last checkpoint in the same tracking run; false: always from the start.",
    )
    checkpoint_every_steps: PositiveInt | None = Field(
        default=None,
        description="Also checkpoint every this many optimiser steps within an epoch (long epochs); null: at "
        "epoch ends only. Needs resume: true.",
    )

    @model_validator(mode="after")
    def _checkpoints_need_resume(self) -> TrainParams:
        if self.checkpoint_every_steps is not None and not self.resume:
            raise ValueError(
                f"train.checkpoint_every_steps is {self.checkpoint_every_steps}, but train.resume is false, so no "
                "checkpoint would be written or read; set train.resume: true or checkpoint_every_steps: null"
            )
        return self

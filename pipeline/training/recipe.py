"""The fine-tuning recipe: a new head on a frozen backbone, then unfreezing from the top.

Read `fine_tune` top to bottom: for each planned phase, set what trains, get its data, compile a
fresh optimiser with the phase's schedule and layer-wise learning rates, and fit on the global epoch
axis. `plan_phases` turns the `train` section into that list of phases, resolving each stage's
inherited settings. The mechanics live elsewhere: `pipeline.model.freezing` (what trains, BatchNorm
policy), `pipeline.training.features` (frozen activations computed once), `pipeline.optim.optimizers`,
`pipeline.optim.schedules`, `pipeline.optim.layerwise` (discriminative learning rates), `pipeline.training.losses`,
`pipeline.training.callbacks` (one history for all phases, early stopping, the divergence guard).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import keras

from pipeline.model.freezing import layer_map, restore_layer_classes, set_trainable_blocks
from pipeline.model.head import Classifier
from pipeline.optim.layerwise import block_multipliers, variable_multipliers
from pipeline.optim.optimizers import make_optimizer
from pipeline.optim.schedules import make_schedule
from pipeline.params.train import EarlyStoppingParams
from pipeline.runtime.compiled import compiled_settings
from pipeline.training.callbacks import DivergenceGuard, HistoryRecorder, early_stopping
from pipeline.training.checkpoint import restore_layers
from pipeline.training.features import ImageSplit, InputSettings, PhaseDataFactory
from pipeline.training.history import PhaseRecord, TrainingHistory
from pipeline.training.losses import classification_loss
from pipeline.training.resume import (
    Checkpointing,
    PhaseProgress,
    fit_phase,
    note_trained_layers,
    restore_optimizer,
    stateful_callbacks,
    write_start,
)

if TYPE_CHECKING:
    from pipeline.params.optimizer import OptimizerParams
    from pipeline.params.schedule import ScheduleParams
    from pipeline.params.train import TrainParams, UnfreezeDepthParams
    from pipeline.training.diagnostics import TrainingDiagnostics


@dataclass(frozen=True)
class Phase:
    """One `fit`: what trains, for how long, and how it is optimised.

    Attributes:
        name: `frozen`, `unfreeze_top_<k>` or `unfreeze_all`.
        trainable_blocks: Blocks from the top that train (0: only the head).
        epochs: The most epochs the phase runs (early stopping may end it sooner); schedules span them.
        learning_rate: The phase's LR, lr0 of its schedule (the head's LR under discriminative LR).
        optimizer: The optimiser's validated settings (name and options).
        schedule: The schedule's validated settings (name and options).
        bn_policy: BatchNorm policy of the unfrozen blocks.
        lr_decay_per_block: Each lower unfrozen block trains at the LR of the block above / this.
        early_stopping: Early stopping settings, or None.
        min_epochs: Epochs before early stopping may end the phase (None: any epoch).
        length_note: Why the phase is this long, for the printed plan (empty for a fixed length).
        depth_note: Why it unfreezes this many blocks (empty unless `blocks: auto`).
    """

    name: str
    trainable_blocks: int
    epochs: int
    learning_rate: float
    optimizer: OptimizerParams
    schedule: ScheduleParams
    bn_policy: str = "frozen"
    lr_decay_per_block: float = 1.0
    early_stopping: EarlyStoppingParams | None = None
    min_epochs: int | None = None
    length_note: str = ""
    depth_note: str = ""

    def describe_plan(self) -> str:
        """One line of the printed plan: what trains, for how long and why, and when it stops.

        For example "frozen: 47 to 100 epochs (13 steps each: at least 600 steps, at most 3500 steps or
        100 epochs), early stopping on val_loss, patience 3, best epoch restored; adam lr 0.001 (constant)".
        """
        if self.min_epochs is not None and self.min_epochs < self.epochs:
            length = f"{self.min_epochs} to {self.epochs} epochs"
        else:
            length = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        length += f" ({self.length_note})" if self.length_note else ""
        if self.early_stopping is None:
            stopping = "no early stopping"
        else:
            stopping = f"early stopping on {self.early_stopping.monitor}, patience {self.early_stopping.patience}"
            stopping += ", best epoch restored" if self.early_stopping.restore_best else ""
        trains = "the head" if self.trainable_blocks == 0 else f"the head and the top {self.trainable_blocks} blocks"
        trains += f" ({self.depth_note})" if self.depth_note else ""
        return (
            f"{self.name}: {length}, {stopping}; {trains} at {self.optimizer.name} lr {self.learning_rate:g} "
            f"({self.schedule.name})"
        )


# What `early_stopping: auto` means for an `epochs: auto` phase: stop once the validation loss has not
# improved for 3 epochs and go on from the best epoch. Fixed-length phases run every epoch they were given.
AUTO_EARLY_STOPPING = EarlyStoppingParams(monitor="val_loss", patience=3, min_delta=0.0, restore_best=True)


def phase_length(
    *,
    epochs: int | str,
    steps_per_epoch: int,
    min_steps: int,
    max_steps: int,
    max_epochs: int,
) -> tuple[int, int | None, str]:
    """How many epochs a phase may run, and how many it must, when `epochs` is auto: bounds in steps.

    Args:
        epochs: A fixed number of epochs, or "auto".
        steps_per_epoch: Optimiser steps of one epoch on this data (batches of the training split).
        min_steps: An auto phase runs at least this many steps (rounded up to whole epochs).
        max_steps: And at most this many (rounded down to whole epochs, but never below the minimum).
        max_epochs: And at most this many epochs (never below the minimum either: the steps come first).

    Returns:
        (most epochs, epochs before early stopping may end the phase or None, why in words).
    """
    if epochs != "auto":
        return int(epochs), None, ""
    least = math.ceil(min_steps / steps_per_epoch)
    most = max(least, min(max_steps // steps_per_epoch, max_epochs))
    why = f"{steps_per_epoch} steps each: at least {min_steps} steps, at most {max_steps} steps or {max_epochs} epochs"
    return most, least, why


def _momentum_for_cycling(optimizer: OptimizerParams, schedule: ScheduleParams) -> OptimizerParams:
    """1cycle cycles momentum; an SGD or RMSprop without momentum has nothing to cycle, so give it one.

    Keras builds momentum slots only when momentum > 0, so the optimiser starts at the cycle's top.
    """
    cycles = schedule.name == "onecycle" and schedule.cycle_momentum
    if cycles and optimizer.momentum_term == "momentum" and optimizer.momentum == 0.0:
        return optimizer.model_copy(update={"momentum": schedule.max_momentum})
    return optimizer


def _early_stopping(setting: EarlyStoppingParams | str | None, *, automatic: bool) -> EarlyStoppingParams | None:
    """`auto` stops the phases whose length is auto, and none of the fixed ones; settings stop every phase."""
    if setting == "auto":
        return AUTO_EARLY_STOPPING if automatic else None
    return setting


def unfreeze_depth(
    blocks: int | str, *, depth: UnfreezeDepthParams, block_count: int, train_examples: int
) -> tuple[int, str]:
    """How many blocks from the top a stage unfreezes, and why when it was `auto`.

    Args:
        blocks: A stage's `blocks`: a number, `all`, or `auto` (more on a small training split).
        depth: The validated `train.unfreeze_depth` section (what `auto` means).
        block_count: Blocks of the backbone (what `all` means, and the most `auto` gives).
        train_examples: Images of the training split.

    Returns:
        (blocks, why in words; empty unless `auto`).
    """
    if blocks == "all":
        return block_count, ""
    if blocks != "auto":
        return int(blocks), ""
    small = train_examples <= depth.small_data_images
    chosen = min(depth.small_data_blocks if small else depth.blocks, block_count)
    relation = "<=" if small else ">"
    return chosen, f"auto: {train_examples} training images {relation} {depth.small_data_images}"


def plan_phases(
    train: TrainParams, *, base_learning_rate: float, block_count: int, steps_per_epoch: int, train_examples: int
) -> list[Phase]:
    """The frozen phase at the base LR, then each unfreeze stage at its fraction of it, each as long as the data needs.

    Args:
        train: The validated `train` section; a stage's unset optimiser, schedule, BatchNorm policy,
            discriminative LR, early stopping and step bounds are the section's.
        base_learning_rate: LR of the frozen phase (a number, or the LR range test's suggestion).
        block_count: Number of blocks of the backbone (what `all` means).
        steps_per_epoch: Optimiser steps of one epoch on the training split, which turn the step bounds of
            the `epochs: auto` phases into epochs.
        train_examples: Images of the training split, which decide what `blocks: auto` unfreezes.

    Returns:
        The phases in order.
    """
    bounds = train.phase_length
    epochs, min_epochs, note = phase_length(
        epochs=train.frozen_epochs,
        steps_per_epoch=steps_per_epoch,
        min_steps=bounds.min_steps,
        max_steps=bounds.max_steps,
        max_epochs=bounds.max_epochs,
    )
    phases = [
        Phase(
            name="frozen",
            trainable_blocks=0,
            epochs=epochs,
            learning_rate=base_learning_rate,
            optimizer=_momentum_for_cycling(train.optimizer, train.schedule),
            schedule=train.schedule,
            bn_policy=train.bn_policy,
            lr_decay_per_block=train.lr_decay_per_block,
            early_stopping=_early_stopping(train.early_stopping, automatic=train.frozen_epochs == "auto"),
            min_epochs=min_epochs,
            length_note=note,
        )
    ]
    for stage in train.unfreeze:
        blocks, depth_note = unfreeze_depth(
            stage.blocks, depth=train.unfreeze_depth, block_count=block_count, train_examples=train_examples
        )
        schedule = stage.schedule or train.schedule
        epochs, min_epochs, note = phase_length(
            epochs=stage.epochs,
            steps_per_epoch=steps_per_epoch,
            min_steps=stage.min_steps or bounds.min_steps,
            max_steps=stage.max_steps or bounds.max_steps,
            max_epochs=stage.max_epochs or bounds.max_epochs,
        )
        phases.append(
            Phase(
                name="unfreeze_all" if stage.blocks == "all" else f"unfreeze_top_{blocks}",
                trainable_blocks=blocks,
                epochs=epochs,
                learning_rate=base_learning_rate * stage.lr_factor,
                optimizer=_momentum_for_cycling(stage.optimizer or train.optimizer, schedule),
                schedule=schedule,
                bn_policy=stage.bn_policy or train.bn_policy,
                lr_decay_per_block=stage.lr_decay_per_block or train.lr_decay_per_block,
                early_stopping=_early_stopping(
                    stage.early_stopping or train.early_stopping, automatic=stage.epochs == "auto"
                ),
                min_epochs=min_epochs,
                length_note=note,
                depth_note=depth_note,
            )
        )
    return phases


def fine_tune(
    classifier: Classifier,
    *,
    train: ImageSplit,
    val: ImageSplit,
    phases: Sequence[Phase],
    inputs: InputSettings,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 2,
    jit_compile: bool | str = "auto",
    diagnostics: TrainingDiagnostics | None = None,
    checkpointing: Checkpointing | None = None,
) -> TrainingHistory:
    """Fine-tunes `classifier` in place, phase after phase.

    Args:
        classifier: Backbone with its new head.
        train: Training images and labels.
        val: Validation images and labels.
        phases: The plan, usually from `plan_phases`.
        inputs: How the images are fed (`InputSettings.from_params(config.train, ...)`): size, batches,
            seed, augmentation, label smoothing of the cross-entropy, and the frozen-feature cache's budget.
        callbacks: Extra callbacks (tracking); they receive `lr` in their logs, and those with a
            `begin_phase(record)` method are told each phase before its first epoch.
        verbose: Keras' `fit` verbosity.
        jit_compile: XLA compilation of each phase's training step: "auto" (Keras decides), True or False.
        diagnostics: The course's diagnostics (`pipeline.training.diagnostics`): block gradient norms
            accumulated by each phase's optimiser, and their callbacks first in each phase's list, so
            their metrics reach the history and the run; None for none.
        checkpointing: Checkpoints after every epoch (`pipeline.training.resume`), and the checkpoint to
            resume from: its finished phases are skipped, its weights, optimiser, callbacks' state and
            history restored, and training goes on at its next epoch (or batch); None for no checkpoints.

    Returns:
        Every epoch of every phase on one axis, the phase boundaries and the trainable-layer map.

    Raises:
        TrainingDivergedError: An epoch's loss was NaN or infinite, or far above that of guessing
            (`pipeline.training.divergence`); training stops at that epoch, and no model should be kept.
    """
    resume = checkpointing.resume if checkpointing is not None else None
    if checkpointing is not None and (resume is None or not resume.state.trained):
        resume = None
        write_start(checkpointing)
    history = resume.state.history() if resume is not None else TrainingHistory()
    trained_layers: list[str] = list(resume.state.trained_layers) if resume is not None else []
    if resume is not None:
        restore_layers(classifier.model, resume)
        if diagnostics is not None:
            diagnostics.restore_flags(resume.state.flags)
    recorder = HistoryRecorder(history)
    # A resumed run's guard goes on from its last trained epoch's loss (see pipeline.training.divergence).
    last_loss = history.rows[-1].get("loss") if history.rows else None
    guard = DivergenceGuard(
        num_classes=classifier.model.output_shape[-1], previous_loss=None if last_loss is None else float(last_loss)
    )
    blocks = classifier.backbone.blocks_top_down
    data = PhaseDataFactory(
        classifier,
        train=train,
        val=val,
        inputs=inputs,
        deepest_trainable_blocks=max(phase.trainable_blocks for phase in phases),
        verbose=verbose,
    )
    for index, phase in enumerate(phases):
        # A resumed run skips the phases its checkpoint finished: their epochs and records are in the history.
        if resume is not None and index < resume.state.phase_index:
            continue
        resuming = resume if resume is not None and index == resume.state.phase_index else None
        started = time.perf_counter() - (resuming.state.phase_seconds if resuming is not None else 0.0)
        set_trainable_blocks(
            classifier.model, blocks, trainable_blocks=phase.trainable_blocks, bn_policy=phase.bn_policy
        )
        phase_data = data.for_phase(phase.trainable_blocks)
        first_epoch = history.phases[-1].end_epoch if history.phases else 0
        schedule = make_schedule(
            phase.schedule,
            learning_rate=phase.learning_rate,
            steps_per_epoch=phase_data.steps_per_epoch,
            epochs=phase.epochs,
            first_epoch=first_epoch,
            momentum_term=phase.optimizer.momentum_term,
        )
        layer_multipliers = block_multipliers(
            [group.layer_names for group in blocks],
            trainable_blocks=phase.trainable_blocks,
            decay_per_block=phase.lr_decay_per_block,
        )
        phase_data.model.compile(
            optimizer=make_optimizer(
                phase.optimizer,
                learning_rate=schedule.learning_rate,
                variable_multipliers=variable_multipliers(phase_data.model, layer_multipliers),
                variable_blocks=diagnostics.variable_blocks(phase_data.model, blocks) if diagnostics else None,
            ),
            loss=classification_loss(label_smoothing=inputs.label_smoothing),
            metrics=["accuracy"],
            jit_compile=jit_compile,
        )
        if resuming is not None:
            restore_optimizer(phase_data.model, resuming)
        else:
            history.layers.extend(
                layer_map(
                    classifier.model, blocks, phase=index, phase_name=phase.name, lr_multipliers=layer_multipliers
                )
            )
        # What the compiled step runs with, read from the model: Keras may have turned XLA off (see the module).
        compiled = compiled_settings(phase_data.model, requested=jit_compile)
        record = PhaseRecord(
            index=index,
            name=phase.name,
            trainable_blocks=phase.trainable_blocks,
            learning_rate=phase.learning_rate,
            first_epoch=first_epoch,
            end_epoch=first_epoch + phase.epochs,
            cached_features=phase_data.cached,
            optimizer=phase.optimizer.name,
            schedule=phase.schedule.name,
            bn_policy=phase.bn_policy,
            lr_decay_per_block=phase.lr_decay_per_block,
            data_note=phase_data.note,
            xla=compiled.xla,
            xla_reason=compiled.xla_reason,
            precision=compiled.precision,
            replicas=compiled.replicas,
        )
        recorder.begin_phase(record)
        guard.begin_phase(record)
        for callback in callbacks:
            if callable(getattr(callback, "begin_phase", None)):
                callback.begin_phase(record)
        stopper = (
            early_stopping(
                **phase.early_stopping.model_dump(), first_epoch=first_epoch, min_epochs=phase.min_epochs or 0
            )
            if phase.early_stopping is not None
            else None
        )
        # What a checkpoint must save: the layers this phase may change, and the callbacks that carry state.
        note_trained_layers(trained_layers, phase_data.model)
        stateful = stateful_callbacks(stopper, schedule.callbacks)
        diagnosing = diagnostics.callbacks(phase_data.model, phase_data.val) if diagnostics else []
        fit_phase(
            phase_data,
            first_epoch=resuming.state.epochs_done if resuming is not None else first_epoch,
            end_epoch=record.end_epoch,
            # The recorder first, so it logs the LR this epoch used before a plateau callback lowers it; the
            # divergence guard last, so that the epoch that blew up is still recorded and logged to the run.
            # The diagnostics before both, so that their metrics are in the epoch's logs.
            callbacks=[*diagnosing, recorder, *schedule.callbacks, *([stopper] if stopper else []), *callbacks, guard],
            checkpointing=checkpointing,
            progress=PhaseProgress(index, history, trained_layers, started, diagnostics, stateful),
            classifier_model=classifier.model,
            resume=resuming,
            verbose=verbose,
        )
        # Early stopping may end a phase sooner and restore its best epoch: record both.
        history.phases.append(
            replace(
                record,
                end_epoch=history.epochs_done,
                best_epoch=stopper.best_epoch if stopper is not None and stopper.restore_best_weights else None,
                seconds=time.perf_counter() - started,
            )
        )
    # Leave no layer in a class swapped by freezing or a BN policy, so the saved model names only Keras classes.
    set_trainable_blocks(classifier.model, blocks, trainable_blocks=0)
    restore_layer_classes(classifier.model)
    return history
